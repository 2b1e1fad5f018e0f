//! A sliver's place on the node's network: its addresses (allocated from `--sliver-net` when
//! its spec gives none, else checked against every other sliver's), its published ports
//! (checked against the other slivers' and the node's own listeners), and the node's
//! nftables table kept equal to what the records ask for (`nft_rules`).

use std::sync::Arc;

use serde::Serialize;

use crate::error::SliverError;
use crate::host_net;
use crate::nft_rules::{self, SliverRules};
use crate::node::Node;
use crate::published_ports::{self, PortForward, Proto};
use crate::sliver_addresses::{addresses, allocate, overlap, SLIVER_PREFIX};
use crate::spec::{SliverNet, SliverSpec};

/// A published port as `GET /slivers/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// `ADDRESS:PORT` on the node's uplink.
    pub node: String,
    /// `ADDRESS:PORT` in the sliver.
    pub sliver: String,
}

impl Node {
    /// Fill `spec`'s addresses when it leaves them to the node (the ones it already has if
    /// sliver `name` exists), and check its addresses and ports against the other slivers'
    /// and the node's. The caller holds `addressing` until the spec is recorded.
    pub(crate) fn plan_network(
        &self,
        name: &str,
        spec: &mut SliverSpec,
    ) -> Result<(), SliverError> {
        let Some(net) = spec.net.as_mut() else {
            return Ok(());
        };
        let others = self.other_nets(name);
        if net.wants_addresses() {
            if let Some(own) = self.registry.get(name).ok().and_then(|r| r.spec.net) {
                net.ipv4 = own.ipv4;
                net.host_ipv4 = own.host_ipv4;
            }
        }
        if net.wants_addresses() {
            let pool = self.net.config.sliver_net.ok_or_else(|| {
                SliverError::invalid(
                    "net.ipv4",
                    "required: this node has no --sliver-net to allocate addresses from",
                )
            })?;
            let taken: Vec<_> = others.iter().filter_map(|(_, n)| n.subnet()).collect();
            let subnet = allocate(pool, &taken).ok_or_else(|| {
                SliverError::conflict(
                    Some("net.ipv4"),
                    format!("--sliver-net {pool} has no free /{SLIVER_PREFIX} left"),
                )
            })?;
            let (guest, host) = addresses(subnet);
            net.ipv4 = format!("{guest}/{SLIVER_PREFIX}");
            net.host_ipv4 = host.to_string();
        } else if let Some(subnet) = net.subnet() {
            if let Some((other, theirs)) = others
                .iter()
                .find_map(|(n, o)| o.subnet().filter(|t| overlap(*t, subnet)).map(|t| (n, t)))
            {
                return Err(SliverError::conflict(
                    Some("net.ipv4"),
                    format!("{subnet} overlaps sliver {other:?}'s {theirs}"),
                ));
            }
        }
        self.check_ports(&net.ports, &others)
    }

    /// Check `ports` against the other slivers' and what listens on the node.
    pub(crate) fn check_ports(
        &self,
        ports: &[PortForward],
        others: &[(String, SliverNet)],
    ) -> Result<(), SliverError> {
        if ports.is_empty() {
            return Ok(());
        }
        if self.net.uplink.is_none() {
            return Err(SliverError::invalid(
                "net.ports",
                "this node has no --uplink to publish ports on",
            ));
        }
        let listening = published_ports::host_listeners();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("net.ports[{i}].node_port");
            if let Some((other, _)) = others.iter().find(|(_, o)| {
                o.ports
                    .iter()
                    .any(|q| q.proto == p.proto && q.node_port == p.node_port)
            }) {
                return Err(SliverError::conflict(
                    Some(&field),
                    format!("{} {} is sliver {other:?}'s", p.proto.name(), p.node_port),
                ));
            }
            if listening.contains(&(p.proto, p.node_port)) {
                return Err(SliverError::conflict(
                    Some(&field),
                    format!(
                        "{} {} is taken: a service on the node listens on it",
                        p.proto.name(),
                        p.node_port
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The other slivers' networks (for [`Node::check_ports`]).
    pub(crate) fn other_nets(&self, name: &str) -> Vec<(String, SliverNet)> {
        self.registry
            .list()
            .into_iter()
            .filter(|(n, _)| n != name)
            .filter_map(|(n, r)| r.spec.net.map(|net| (n, net)))
            .collect()
    }

    /// `net`'s published ports, with the node's address.
    pub(crate) fn published(&self, net: &SliverNet) -> Vec<PublishedPort> {
        let (Some(addr), Some((guest, _))) = (
            self.net.uplink.as_ref().and_then(|u| u.public_addr()),
            net.guest_cidr(),
        ) else {
            return Vec::new();
        };
        net.ports
            .iter()
            .map(|p| PublishedPort {
                proto: p.proto,
                node: format!("{addr}:{}", p.node_port),
                sliver: format!("{guest}:{}", p.sliver_port),
            })
            .collect()
    }

    /// Make the node's nftables table what the records ask for (nodes with an uplink);
    /// `force` applies it even if it is what was applied last (the periodic reconcile: the
    /// table may have been changed by hand).
    ///
    /// # Errors
    /// `nft` failed (the table is then as it was: the batch is one transaction).
    pub(crate) async fn sync_rules(self: &Arc<Self>, force: bool) -> Result<(), SliverError> {
        let Some(uplink) = &self.net.uplink else {
            return Ok(());
        };
        let slivers: Vec<SliverRules> = self
            .registry
            .list()
            .into_iter()
            .filter_map(|(name, r)| {
                let net = r.spec.net?;
                let (guest, _) = net.guest_cidr()?;
                Some(SliverRules {
                    tap: host_net::tap_name(&name),
                    name,
                    guest,
                    ports: net.ports,
                })
            })
            .collect();
        *self.sliver_addrs.write().unwrap_or_else(|p| p.into_inner()) =
            slivers.iter().map(|s| (s.guest, s.name.clone())).collect();
        let batch = nft_rules::ruleset(&uplink.name, &self.net.config.deny_dst, &slivers);
        let mut applied = self.rules_applied.lock().await;
        if !force && applied.as_ref() == Some(&batch) {
            return Ok(());
        }
        let to_apply = batch.clone();
        let result = tokio::task::spawn_blocking(move || nft_rules::apply(&to_apply))
            .await
            .map_err(|e| SliverError::Internal(format!("nft task: {e}")))?;
        match result {
            Ok(()) => {
                *applied = Some(batch);
                Ok(())
            }
            Err(e) => {
                *applied = None;
                Err(SliverError::Internal(format!(
                    "nftables table {}: {e}",
                    nft_rules::TABLE
                )))
            }
        }
    }

    /// Remove the node's nftables table (a clean exit of a node with an uplink).
    pub async fn remove_rules(&self) {
        if self.net.uplink.is_none() {
            return;
        }
        match tokio::task::spawn_blocking(|| nft_rules::apply(&nft_rules::removal())).await {
            Ok(Ok(())) => log::info!("nftables table {} removed", nft_rules::TABLE),
            Ok(Err(e)) => log::error!("removing nftables table {}: {e}", nft_rules::TABLE),
            Err(e) => log::error!("removing nftables table {}: {e}", nft_rules::TABLE),
        }
    }
}
