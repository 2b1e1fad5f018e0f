//! A node with an uplink, without booting guests: the network flags are checked at start;
//! addresses are allocated from --sliver-net (never twice, the same after a restart, free
//! again after a delete) and given ones checked; published ports clash with other slivers'
//! and the node's listeners (409 naming the field); PATCH changes them; the daemon's
//! nftables table (read back with `nft -j`) holds each sliver's masquerade, DNAT, its own
//! chains of drops, is the same after a restart, loses a deleted sliver's rules, and is gone after a
//! clean exit; forwarding is on for the uplink and the TAPs only; another table is never
//! touched. Everything in namespaces this test creates.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use e2e::daemon::{Daemon, ResponseExt, UPLINK_FLAGS};
use e2e::netns::NetNs;
use e2e::run::{slicevisor_bin, wait_with_timeout};
use serde_json::{json, Value};

/// The table as `nft -j` lists it, without the handles (which a re-apply renumbers).
fn table(ns: &NetNs) -> Option<Value> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "table", "inet", "slicevisor"])
        .output()
        .expect("nft (nftables)");
    if !out.status.success() {
        return None;
    }
    let mut v: Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    if let Some(objects) = v["nftables"].as_array_mut() {
        objects.retain(|o| o.get("metainfo").is_none());
    }
    Some(v)
}

/// The rules of chain `chain` whose comment starts with `sliver NAME`.
fn rules_of(table: &Value, chain: &str, sliver: &str) -> Vec<Value> {
    let prefix = format!("sliver {sliver}");
    table["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["chain"] == chain)
        .filter(|r| {
            r["comment"]
                .as_str()
                .is_some_and(|c| c == prefix || c.starts_with(&format!("{prefix}:")))
        })
        .cloned()
        .collect()
}

fn sysctl(ns: &NetNs, iface: &str) -> String {
    ns.sh(&[
        "cat",
        &format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
    ])
}

#[test]
fn a_node_with_an_uplink_allocates_publishes_and_owns_its_rules() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = dir.path().join("vmlinux-stub");
    std::fs::write(&kernel, b"\x7fELF").expect("kernel stub");
    let ns = Arc::new(NetNs::new("svup"));
    let outside = NetNs::new("svout");
    ns.veth(
        "up0",
        "198.51.100.1/24",
        &outside,
        "out0",
        "198.51.100.2/24",
    );
    ns.sh(&["nft", "add", "table", "inet", "other"]);
    ns.sh(&["nft", "add", "chain", "inet", "other", "c"]);
    let other_before = ns.sh(&["nft", "-j", "list", "table", "inet", "other"]);

    // Bad flags: each named, nothing served.
    for (flags, says) in [
        (
            &["--uplink", "nope0"][..],
            "--uplink nope0: no such interface",
        ),
        (
            &["--uplink", "up0", "--sliver-net", "198.51.0.0/16"],
            "--sliver-net 198.51.0.0/16 overlaps 198.51.100.1/24 of --uplink up0",
        ),
        (
            &["--deny-dst", "203.0.113.0/24"],
            "--deny-dst needs --uplink",
        ),
    ] {
        let child = ns
            .command(slicevisor_bin())
            .args(["node", "--socket"])
            .arg(dir.path().join("bad.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("bad-state"))
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("slicevisor node");
        let out = wait_with_timeout(child, Duration::from_secs(20));
        assert_ne!(out.code(), 0, "{flags:?}");
        assert!(out.stderr.contains(says), "{flags:?}: {}", out.stderr);
    }

    let d = Daemon::start_with(dir.path(), ns.clone(), UPLINK_FLAGS);
    let spec = |net: Value| json!({"slice": "pl_test", "kernel": kernel, "net": net});
    let a = d.call(
        "PUT",
        "/slivers/a",
        Some(spec(
            json!({"ports": [{"proto": "tcp", "node_port": 2222, "sliver_port": 22}]}),
        )),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = a.json();
    assert_eq!(a["spec"]["net"]["ipv4"], "10.99.0.2/30");
    assert_eq!(a["spec"]["net"]["host_ipv4"], "10.99.0.1");
    assert_eq!(
        a["published"],
        json!([{"proto": "tcp", "node": "198.51.100.1:2222", "sliver": "10.99.0.2:22"}])
    );
    let b = d.call("PUT", "/slivers/b", Some(spec(json!({})))).json();
    assert_eq!(b["spec"]["net"]["ipv4"], "10.99.0.6/30");
    // The same PUT again is the same sliver, addresses and all.
    assert_eq!(
        d.call("PUT", "/slivers/b", Some(spec(json!({})))).status,
        200
    );

    // Clashes and bad ports: 409 or 400 naming the field, nothing defined.
    let mut listener = ns
        .command("python3")
        .args(["-c", "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',8080))\ns.listen()\nprint('up',flush=True)\ntime.sleep(120)"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let ready = listener.stdout.take().expect("stdout");
    let listener = e2e::run::ChildGuard::new(listener);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(ready), &mut line)
        .expect("listener up");
    for (net, status, field) in [
        (
            json!({"ports": [{"proto": "tcp", "node_port": 2222, "sliver_port": 80}]}),
            409,
            "net.ports[0].node_port",
        ),
        (
            json!({"ports": [{"proto": "tcp", "node_port": 8080, "sliver_port": 80}]}),
            409,
            "net.ports[0].node_port",
        ),
        (
            json!({"ports": [{"proto": "udp", "node_port": 53, "sliver_port": 53}, {"proto": "udp", "node_port": 53, "sliver_port": 54}]}),
            400,
            "net.ports[1].node_port",
        ),
        (
            json!({"ports": [{"proto": "sctp", "node_port": 1, "sliver_port": 1}]}),
            400,
            "net.ports[0].proto",
        ),
        (
            json!({"ports": [{"proto": "tcp", "node_port": 70000, "sliver_port": 1}]}),
            400,
            "net.ports[0].node_port",
        ),
        (
            json!({"ipv4": "10.99.0.5/30", "host_ipv4": "10.99.0.6"}),
            409,
            "net.ipv4",
        ),
        (json!({"ipv4": "10.98.0.2/30"}), 400, "net.host_ipv4"),
    ] {
        let r = d.call("PUT", "/slivers/c", Some(spec(net.clone())));
        assert_eq!(r.status, status, "{net}: {}", r.body);
        assert_eq!(r.json()["field"], field, "{net}");
    }
    drop(listener);
    assert_eq!(d.call("GET", "/slivers/c", None).status, 404);

    // Change the ports (`ctl ports` PATCHes them).
    let socket = d.socket.to_str().expect("utf8").to_string();
    let p = e2e::run::run(
        [
            "ctl",
            "--socket",
            &socket,
            "ports",
            "a",
            "--publish",
            "udp:5353:53",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(p.code(), 0, "{p:?}");
    let a = d.call("GET", "/slivers/a", None).json();
    assert_eq!(a["published"][0]["node"], "198.51.100.1:5353", "{a}");
    let bad = e2e::run::run(
        [
            "ctl",
            "--socket",
            &socket,
            "ports",
            "a",
            "--publish",
            "tcp:22",
        ],
        Duration::from_secs(20),
    );
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr.contains("PROTO:NODE_PORT:SLIVER_PORT"),
        "{bad:?}"
    );
    let clash = d.call(
        "PATCH",
        "/slivers/b",
        Some(json!({"ports": [{"proto": "udp", "node_port": 5353, "sliver_port": 53}]})),
    );
    assert_eq!(clash.status, 409, "{}", clash.body);

    // An image sliver publishing its ssh: GET shows how to reach it from outside.
    let image = e2e::guest::ext4_image(dir.path(), "tiny.ext4", 16);
    let imported = e2e::run::run(
        [
            "image",
            "--socket",
            &socket,
            "import",
            "tiny",
            image.to_str().expect("utf8"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(imported.code(), 0, "{imported:?}");
    let key = dir.path().join("key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(keygen.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let s = d.call(
        "PUT",
        "/slivers/s",
        Some(
            json!({"slice": "pl_test", "kernel": kernel, "vref": "tiny", "disk_max": 20000,
                    "keys": [public.trim()],
                    "net": {"ports": [{"proto": "tcp", "node_port": 2200, "sliver_port": 22}]}}),
        ),
    );
    assert_eq!(s.status, 201, "{}", s.body);
    assert_eq!(s.json()["ssh"]["outside"], "ssh -p 2200 root@198.51.100.1");
    assert_eq!(s.json()["ssh"]["command"], "ssh root@10.99.0.10");

    // The table: per sliver, masquerade out through up0, its drops, and a's DNAT.
    let t = table(&ns).expect("the daemon's table");
    for sliver in ["a", "b"] {
        let post = rules_of(&t, "postrouting", sliver);
        assert_eq!(post.len(), 1, "{sliver}: {post:?}");
        assert!(post[0].to_string().contains("\"masquerade\""));
        assert_eq!(rules_of(&t, &format!("node-{sliver}"), sliver).len(), 1);
        let fwd = rules_of(&t, &format!("out-{sliver}"), sliver)
            .iter()
            .map(Value::to_string)
            .collect::<String>();
        assert!(fwd.contains("203.0.113.0"), "{fwd}");
    }
    let dnat = rules_of(&t, "prerouting", "a");
    assert_eq!(dnat.len(), 1);
    let dnat = dnat[0].to_string();
    assert!(
        dnat.contains(r#""addr":"10.99.0.2""#) && dnat.contains(r#""port":53"#),
        "{dnat}"
    );
    // nft lists `meta l4proto udp th dport 5353` as `udp dport 5353`.
    assert!(
        dnat.contains(r#""right":5353"#) && dnat.contains(r#""protocol":"udp""#),
        "{dnat}"
    );
    assert_eq!(sysctl(&ns, "up0"), "1");
    assert_eq!(sysctl(&ns, "sv-a"), "1");
    assert_eq!(
        sysctl(&ns, "lo"),
        "0",
        "forwarding only where slivers need it"
    );

    // A restart (SIGKILL: no clean exit) re-applies the same table: nothing doubled or lost.
    let ns = d.kill();
    let d = Daemon::start_with(dir.path(), ns.clone(), UPLINK_FLAGS);
    assert_eq!(table(&ns), Some(t), "the table after a restart");
    assert_eq!(
        d.call("GET", "/slivers/b", None).json()["spec"]["net"]["ipv4"],
        "10.99.0.6/30"
    );

    // Delete: a's rules go, and its addresses are free for the next sliver.
    assert_eq!(d.call("DELETE", "/slivers/a", None).status, 204);
    let t = table(&ns).expect("table");
    for chain in ["out-a", "in-a", "node-a", "prerouting", "postrouting"] {
        assert!(rules_of(&t, chain, "a").is_empty(), "{chain}");
    }
    let chains: Vec<&Value> = t["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("chain"))
        .map(|c| &c["name"])
        .collect();
    assert!(!chains.contains(&&json!("out-a")), "{chains:?}");
    assert!(chains.contains(&&json!("out-b")), "{chains:?}");
    let e = d.call("PUT", "/slivers/e", Some(spec(json!({})))).json();
    assert_eq!(e["spec"]["net"]["ipv4"], "10.99.0.2/30");

    // A clean exit removes the table; the other table is as it was.
    d.stop();
    assert_eq!(table(&ns), None, "the table after a clean exit");
    assert_eq!(
        ns.sh(&["nft", "-j", "list", "table", "inet", "other"]),
        other_before
    );
}
