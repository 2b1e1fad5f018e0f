//! The node's nftables table, `inet slicevisor`: what slivers may reach and how they reach
//! the outside, built as a pure function of the node's uplink and the slivers, and applied
//! whole in one `nft` transaction (add table, flush it, add chains and rules), so that a
//! re-apply (every reconcile, a daemon restart) neither duplicates nor loses a rule and the
//! kernel never shows half a ruleset. Other tables are never touched. Rules are nftables
//! JSON (`libnftables-json(5)`), checked by the `nftables` crate's schema and applied by `nft`.
//!
//! | chain (hook, priority) | rules, per sliver with TAP `T`, address `G`, ports `P` |
//! |---|---|
//! | `forward` (filter, 0) | from `T`: IPv6 dropped; to a denied network or not out through the uplink counted and dropped; else accepted. From the uplink to `T`: replies (`ct state established,related`) and forwarded ports (`ct status dnat`) accepted, the rest counted and dropped |
//! | `input` (filter, 0) | from `T`: replies accepted, the rest (the node's own services) counted and dropped |
//! | `prerouting` (nat, -100) | from the uplink, `P.proto` to `P.node_port`: `dnat ip to G:P.sliver_port` |
//! | `postrouting` (nat, 100) | from `G` out through the uplink: `masquerade` |
//!
//! The VMM drops what the sliver may not send before it reaches the host (anti-spoofing's
//! `deny_dst`, audited); these rules are the node's own second line.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::published_ports::PortForward;

/// The table's family and name.
pub const FAMILY: &str = "inet";
/// The table's name.
pub const TABLE: &str = "slicevisor";

/// Errors applying the rules.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The JSON did not fit the nftables schema (a bug here).
    #[error("nftables ruleset: {0}")]
    Schema(serde_json::Error),
    /// `nft` failed or could not run.
    #[error("nft: {0}")]
    Nft(String),
}

/// What the rules need of one sliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliverRules {
    /// The sliver's name (in rule comments).
    pub name: String,
    /// Its TAP.
    pub tap: String,
    /// Its address.
    pub guest: Ipv4Addr,
    /// Its forwarded ports.
    pub ports: Vec<PortForward>,
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn ct_in(key: &str, right: Value) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": key}}, "right": right}})
}

fn prefixes(nets: &[Ipv4Net]) -> Value {
    let set: Vec<Value> = nets
        .iter()
        .map(|n| json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}}))
        .collect();
    json!({"set": set})
}

fn rule(chain: &str, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
                            "comment": comment, "expr": expr}}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name, "type": kind,
                             "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn table() -> Value {
    json!({"table": {"family": FAMILY, "name": TABLE}})
}

/// The whole table for `slivers` behind `uplink`, denying `deny` (the site's networks and
/// the slivers' own network), as one nftables JSON batch.
pub fn ruleset(uplink: &str, deny: &[Ipv4Net], slivers: &[SliverRules]) -> Value {
    let mut cmds = vec![
        json!({"add": table()}),
        json!({"flush": table()}),
        chain("forward", "filter", "forward", 0),
        chain("input", "filter", "input", 0),
        chain("prerouting", "nat", "prerouting", -100),
        chain("postrouting", "nat", "postrouting", 100),
    ];
    let counted_drop = || [json!({"counter": null}), json!({"drop": null})];
    for s in slivers {
        let from = matches(meta("iifname"), json!(s.tap));
        let to = matches(meta("oifname"), json!(s.tap));
        let comment = format!("sliver {}", s.name);
        cmds.push(rule(
            "forward",
            &comment,
            vec![
                from.clone(),
                matches(meta("nfproto"), json!("ipv6")),
                json!({"drop": null}),
            ],
        ));
        if !deny.is_empty() {
            let mut e = vec![
                from.clone(),
                matches(
                    json!({"payload": {"protocol": "ip", "field": "daddr"}}),
                    prefixes(deny),
                ),
            ];
            e.extend(counted_drop());
            cmds.push(rule(
                "forward",
                &format!("{comment}: denied destination"),
                e,
            ));
        }
        let mut e = vec![
            from.clone(),
            json!({"match": {"op": "!=", "left": meta("oifname"), "right": uplink}}),
        ];
        e.extend(counted_drop());
        cmds.push(rule("forward", &format!("{comment}: not to the uplink"), e));
        cmds.push(rule(
            "forward",
            &comment,
            vec![from.clone(), json!({"accept": null})],
        ));
        let in_from_uplink = matches(meta("iifname"), json!(uplink));
        cmds.push(rule(
            "forward",
            &comment,
            vec![
                in_from_uplink.clone(),
                to.clone(),
                ct_in("state", json!(["established", "related"])),
                json!({"accept": null}),
            ],
        ));
        cmds.push(rule(
            "forward",
            &comment,
            vec![
                in_from_uplink.clone(),
                to.clone(),
                ct_in("status", json!("dnat")),
                json!({"accept": null}),
            ],
        ));
        let mut e = vec![in_from_uplink.clone(), to];
        e.extend(counted_drop());
        cmds.push(rule("forward", &format!("{comment}: unsolicited"), e));
        cmds.push(rule(
            "input",
            &comment,
            vec![
                from.clone(),
                ct_in("state", json!(["established", "related"])),
                json!({"accept": null}),
            ],
        ));
        let mut e = vec![from];
        e.extend(counted_drop());
        cmds.push(rule("input", &format!("{comment}: the node's services"), e));
        for p in &s.ports {
            cmds.push(rule(
                "prerouting",
                &format!("{comment}: {} {}", p.proto.name(), p.node_port),
                vec![
                    in_from_uplink.clone(),
                    matches(meta("l4proto"), json!(p.proto.name())),
                    matches(
                        json!({"payload": {"protocol": "th", "field": "dport"}}),
                        json!(p.node_port),
                    ),
                    json!({"dnat": {"family": "ip", "addr": s.guest.to_string(),
                                    "port": p.sliver_port}}),
                ],
            ));
        }
        cmds.push(rule(
            "postrouting",
            &comment,
            vec![
                matches(
                    json!({"payload": {"protocol": "ip", "field": "saddr"}}),
                    json!(s.guest.to_string()),
                ),
                matches(meta("oifname"), json!(uplink)),
                json!({"masquerade": null}),
            ],
        ));
    }
    json!({"nftables": cmds})
}

/// The batch that removes the table (and does nothing when there is none).
pub fn removal() -> Value {
    json!({"nftables": [{"add": table()}, {"delete": table()}]})
}

/// Check `batch` against the nftables schema and apply it with `nft -j -f -` (blocking).
///
/// # Errors
/// The batch does not fit the schema, or `nft` fails (its message is kept).
pub fn apply(batch: &Value) -> Result<(), NftError> {
    let parsed: nftables::schema::Nftables =
        serde_json::from_value(batch.clone()).map_err(NftError::Schema)?;
    nftables::helper::apply_ruleset(&parsed).map_err(|e| match e {
        nftables::helper::NftablesError::NftFailed { stderr, .. } => NftError::Nft(stderr),
        other => NftError::Nft(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::published_ports::Proto;

    fn sliver(name: &str, guest: [u8; 4], ports: Vec<PortForward>) -> SliverRules {
        SliverRules {
            name: name.into(),
            tap: format!("sv-{name}"),
            guest: guest.into(),
            ports,
        }
    }

    #[test]
    fn the_batch_fits_the_nftables_schema_and_is_deterministic() {
        let slivers = [
            sliver("a", [10, 9, 0, 2], vec![]),
            sliver(
                "b",
                [10, 9, 0, 6],
                vec![PortForward {
                    proto: Proto::Tcp,
                    node_port: 2222,
                    sliver_port: 22,
                }],
            ),
        ];
        let deny = [
            "10.9.0.0/16".parse().expect("net"),
            "192.0.2.0/24".parse().expect("net"),
        ];
        let batch = ruleset("eth0", &deny, &slivers);
        assert_eq!(batch, ruleset("eth0", &deny, &slivers));
        let parsed: nftables::schema::Nftables =
            serde_json::from_value(batch.clone()).expect("the crate's schema");
        // add table, flush, 4 chains; per sliver 10 rules, plus one per port.
        assert_eq!(parsed.objects.len(), 6 + 10 + 11);
        let text = batch.to_string();
        assert!(
            text.contains(r#""dnat":{"addr":"10.9.0.6","family":"ip","port":22}"#),
            "{text}"
        );
        assert!(text.contains(r#""right":2222"#));
        assert!(text.contains(r#""masquerade":null"#));
    }

    #[test]
    fn no_slivers_leaves_an_empty_table_with_its_chains() {
        let batch = ruleset("eth0", &[], &[]);
        assert_eq!(batch["nftables"].as_array().map(Vec::len), Some(6));
    }
}
