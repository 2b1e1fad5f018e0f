//! The node's nftables table, `inet slicevisor`: what slivers may reach and how they reach
//! the outside, built as a pure function of the node's uplink and the slivers, and applied
//! whole in one `nft` transaction (add the table, delete it, add it with its chains and
//! rules), so that a re-apply (every reconcile, a daemon restart) neither duplicates nor loses
//! a rule and the kernel never shows half a ruleset. Other tables are never touched. Rules are nftables
//! JSON (`libnftables-json(5)`), checked by the `nftables` crate's schema and applied by `nft`.
//!
//! | chain | rules |
//! |---|---|
//! | `forward` (filter hook, 0) | established and related connections accepted; then by a verdict map on the input interface, `out-NAME` for a sliver's TAP; by one on the output interface, `in-NAME` |
//! | `out-NAME` | IPv6 dropped; a denied destination, or anything not leaving through the uplink, counted and dropped; the rest accepted |
//! | `in-NAME` | from the uplink, published ports (`ct status dnat`) accepted; the rest counted and dropped |
//! | `input` (filter hook, 0) | established and related accepted; by a verdict map on the input interface, `node-NAME`: counted and dropped (the node's services) |
//! | `prerouting` (nat hook, -100) | from the uplink, each published port: `dnat ip to GUEST:PORT` |
//! | `postrouting` (nat hook, 100) | from the sliver's address out through the uplink: `masquerade` |
//!
//! A packet walks at most a few rules whatever the number of slivers (the verdict maps are
//! hash lookups); the NAT chains see only a connection's first packet.
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

/// The chain of sliver `name`'s packets of `kind` (`out`: from its TAP, forwarded; `in`: to
/// its TAP, forwarded; `node`: from its TAP to the node).
pub fn sliver_chain(kind: &str, name: &str) -> String {
    format!("{kind}-{name}")
}

fn jump_map(key: &str, slivers: &[SliverRules], kind: &str) -> Value {
    let pairs: Vec<Value> = slivers
        .iter()
        .map(|s| json!([s.tap, {"jump": {"target": sliver_chain(kind, &s.name)}}]))
        .collect();
    json!({"vmap": {"key": meta(key), "data": {"set": pairs}}})
}

fn regular_chain(name: &str) -> Value {
    json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})
}

/// The whole table for `slivers` behind `uplink`, denying `deny` (the site's networks), as
/// one nftables JSON batch. Packets of established connections are accepted first; the
/// others go, by a verdict map on their interface (one lookup however many slivers), to
/// their sliver's own short chain.
pub fn ruleset(uplink: &str, deny: &[Ipv4Net], slivers: &[SliverRules]) -> Value {
    let mut cmds = vec![
        // Add first so that the delete never fails; the delete drops every chain of
        // slivers that are gone; all in one transaction.
        json!({"add": table()}),
        json!({"delete": table()}),
        json!({"add": table()}),
        chain("forward", "filter", "forward", 0),
        chain("input", "filter", "input", 0),
        chain("prerouting", "nat", "prerouting", -100),
        chain("postrouting", "nat", "postrouting", 100),
    ];
    if slivers.is_empty() {
        return json!({"nftables": cmds});
    }
    let counted_drop = || [json!({"counter": null}), json!({"drop": null})];
    let established = ct_in("state", json!(["established", "related"]));
    let from_uplink = matches(meta("iifname"), json!(uplink));
    for s in slivers {
        for kind in ["out", "in", "node"] {
            cmds.push(regular_chain(&sliver_chain(kind, &s.name)));
        }
    }
    cmds.push(rule(
        "forward",
        "established connections",
        vec![established.clone(), json!({"accept": null})],
    ));
    cmds.push(rule(
        "forward",
        "from a sliver",
        vec![jump_map("iifname", slivers, "out")],
    ));
    cmds.push(rule(
        "forward",
        "to a sliver",
        vec![jump_map("oifname", slivers, "in")],
    ));
    cmds.push(rule(
        "input",
        "established connections",
        vec![established, json!({"accept": null})],
    ));
    cmds.push(rule(
        "input",
        "from a sliver",
        vec![jump_map("iifname", slivers, "node")],
    ));
    for s in slivers {
        let comment = format!("sliver {}", s.name);
        let out = sliver_chain("out", &s.name);
        cmds.push(rule(
            &out,
            &format!("{comment}: no IPv6 beyond the link"),
            vec![
                matches(meta("nfproto"), json!("ipv6")),
                json!({"drop": null}),
            ],
        ));
        if !deny.is_empty() {
            let mut e = vec![matches(
                json!({"payload": {"protocol": "ip", "field": "daddr"}}),
                prefixes(deny),
            )];
            e.extend(counted_drop());
            cmds.push(rule(&out, &format!("{comment}: denied destination"), e));
        }
        let mut e = vec![json!({"match": {"op": "!=", "left": meta("oifname"), "right": uplink}})];
        e.extend(counted_drop());
        cmds.push(rule(&out, &format!("{comment}: not to the uplink"), e));
        cmds.push(rule(&out, &comment, vec![json!({"accept": null})]));
        let into = sliver_chain("in", &s.name);
        cmds.push(rule(
            &into,
            &format!("{comment}: published ports"),
            vec![
                from_uplink.clone(),
                ct_in("status", json!("dnat")),
                json!({"accept": null}),
            ],
        ));
        cmds.push(rule(
            &into,
            &format!("{comment}: unsolicited"),
            counted_drop().to_vec(),
        ));
        cmds.push(rule(
            &sliver_chain("node", &s.name),
            &format!("{comment}: the node's services"),
            counted_drop().to_vec(),
        ));
        for p in &s.ports {
            cmds.push(rule(
                "prerouting",
                &format!("{comment}: {} {}", p.proto.name(), p.node_port),
                vec![
                    from_uplink.clone(),
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
        // add, delete, add the table, 4 base chains, 5 dispatch rules; per sliver 3 chains
        // and 8 rules, plus one per port.
        assert_eq!(parsed.objects.len(), 7 + 5 + 2 * 11 + 1);
        let text = batch.to_string();
        assert!(
            text.contains(r#""dnat":{"addr":"10.9.0.6","family":"ip","port":22}"#),
            "{text}"
        );
        assert!(text.contains(r#""right":2222"#));
        assert!(text.contains(r#""masquerade":null"#));
        assert!(
            text.contains(r#"["sv-b",{"jump":{"target":"out-b"}}]"#),
            "{text}"
        );
    }

    #[test]
    fn no_slivers_leaves_an_empty_table_with_its_chains() {
        let batch = ruleset("eth0", &[], &[]);
        assert_eq!(batch["nftables"].as_array().map(Vec::len), Some(7));
    }
}
