//! Real Linux slivers on a node with an uplink: sliver a fetches a file from a server
//! "outside" (through the node's masquerade: the server sees the node's address) and has
//! the resolver it was given; "outside" reaches a server in sliver b through b's published
//! port; a cannot reach b, the node's own services (on its side of a's TAP or on the uplink
//! address) nor a host on the deny-listed "site" network: nothing arrives there, and the
//! drops are counted and audited with the slice; the audit query for the outside address
//! names slice and sliver. Namespaces: the node's, "outside" (joined by the uplink veth) and
//! "site" (joined by another veth), all made here.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::daemon::{audit_now_path, Daemon, ResponseExt, UPLINK_FLAGS};
use e2e::guest::{artifacts, boot_lock, LINUX_BOOT_TIMEOUT};
use e2e::netns::NetNs;
use serde_json::{json, Value};

const FILE: &str = "slicevisor-outside-file-7f3a";

/// A listener in `ns` on `addr` that records who connected.
fn listen(ns: &NetNs, addr: &'static str) -> Arc<Mutex<Vec<String>>> {
    let listener = ns.run_in(move || TcpListener::bind(addr).expect("bind in netns"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            record.lock().expect("lock").push(peer);
        }
    });
    seen
}

fn console(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("state/run/{name}/console"))).unwrap_or_default()
}

#[test]
fn slivers_reach_the_outside_and_only_the_outside() {
    let (kernel, initrd) = artifacts();
    let _one_at_a_time = boot_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let node = Arc::new(NetNs::new("svnat"));
    let outside = NetNs::new("svnatout");
    let site = NetNs::new("svnatsite");
    node.veth(
        "up0",
        "198.51.100.1/24",
        &outside,
        "out0",
        "198.51.100.2/24",
    );
    node.veth("site0", "203.0.113.1/24", &site, "site1", "203.0.113.2/24");
    site.sh(&["ip", "route", "add", "default", "via", "203.0.113.1"]);

    // Outside: a web server that records who asked.
    let web = outside.run_in(|| TcpListener::bind("198.51.100.2:8000").expect("bind"));
    let web_peers = Arc::new(Mutex::new(Vec::new()));
    let record = web_peers.clone();
    std::thread::spawn(move || {
        for mut conn in web.incoming().flatten() {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            record.lock().expect("lock").push(peer);
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{FILE}\n").as_bytes());
        }
    });
    // What a must not reach: the node's services and a site host.
    let node_service = listen(&node, "0.0.0.0:9100");
    let site_host = listen(&site, "203.0.113.2:9000");

    let d = Daemon::start_with(dir.path(), node.clone(), UPLINK_FLAGS);
    let probe = |target: &str| format!("nc -w 3 {target} </dev/null; echo PROBE-{target}=$?");
    let a_cmd = [
        "grep nameserver /etc/resolv.conf".to_string(),
        "wget -q -O - http://198.51.100.2:8000/f".to_string(),
        probe("10.99.0.6 8080"),
        probe("10.99.0.1 9100"),
        probe("198.51.100.1 9100"),
        probe("203.0.113.2 9000"),
        // Printed as A-2-DONE: the command line (which the console shows) never matches.
        "echo A-$((1+1))-DONE; sleep 600".to_string(),
    ]
    .join("; ");
    let b_cmd = "while true; do echo hello-from-b | nc -l -p 8080; done";
    for (name, cmd, ports) in [
        ("a", a_cmd.as_str(), json!([])),
        (
            "b",
            b_cmd,
            json!([{"proto": "tcp", "node_port": 8080, "sliver_port": 8080}]),
        ),
    ] {
        let spec = json!({"slice": "pl_nat", "kernel": kernel, "initrd": initrd, "mem_mib": 256,
                          "cmdline": format!("sliver_cmd=\"{cmd}\""), "net": {"ports": ports}});
        let r = d.call("PUT", &format!("/slivers/{name}"), Some(spec));
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(
        d.call("GET", "/slivers/b", None).json()["spec"]["net"]["ipv4"],
        "10.99.0.6/30"
    );
    let start = Instant::now();
    for name in ["a", "b"] {
        let r = d.call("POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // Outside reaches b's server through the node's published port.
    let reply = loop {
        let got = outside.run_in(|| {
            let mut s = TcpStream::connect_timeout(
                &"198.51.100.1:8080".parse().expect("addr"),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        if let Some(text) = got.filter(|t| t.contains("hello-from-b")) {
            break text;
        }
        assert!(
            start.elapsed() < LINUX_BOOT_TIMEOUT * 2,
            "outside never reached b:\n{}",
            console(dir.path(), "b")
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "outside -> b via 198.51.100.1:8080 after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(reply.trim(), "hello-from-b");

    // a: the resolver, the outside file, and four probes that must fail.
    while !console(dir.path(), "a").contains("A-2-DONE") {
        assert!(
            start.elapsed() < LINUX_BOOT_TIMEOUT * 3,
            "a never finished:\n{}",
            console(dir.path(), "a")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let a_log = console(dir.path(), "a");
    eprintln!("a finished after {:.1} s", start.elapsed().as_secs_f64());
    assert!(a_log.contains("nameserver 198.51.100.2"), "{a_log}");
    assert!(a_log.contains(FILE), "a fetched the outside file:\n{a_log}");
    let web_peer = web_peers.lock().expect("lock").clone();
    assert_eq!(web_peer.len(), 1, "{web_peer:?}");
    let public_port = web_peer[0]
        .strip_prefix("198.51.100.1:")
        .unwrap_or_else(|| panic!("the outside server saw {web_peer:?}, not the node's address"))
        .to_string();
    for target in [
        "10.99.0.6 8080",
        "10.99.0.1 9100",
        "198.51.100.1 9100",
        "203.0.113.2 9000",
    ] {
        let line = format!("PROBE-{target}=");
        let status = a_log
            .lines()
            .find_map(|l| l.trim().strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in:\n{a_log}"));
        assert_ne!(status.trim(), "0", "a reached {target}:\n{a_log}");
    }
    assert!(!a_log.contains("hello-from-b"), "a reached b:\n{a_log}");
    assert!(
        node_service.lock().expect("lock").is_empty(),
        "a reached the node's service"
    );
    assert!(
        site_host.lock().expect("lock").is_empty(),
        "a reached the site"
    );

    // The drops are a's, counted and audited with the slice.
    let view = d.call("GET", "/slivers/a", None).json();
    assert!(
        view["counters"]["drops"].as_u64().unwrap_or(0) >= 4,
        "{view}"
    );
    // A flow is written once idle for 15 s (the audit's idle timeout): wait for it.
    let audited = Instant::now();
    for (dst, port) in [
        ("10.99.0.6", 8080),
        ("10.99.0.1", 9100),
        ("198.51.100.1", 9100),
        ("203.0.113.2", 9000),
    ] {
        loop {
            let answer = d
                .call(
                    "GET",
                    &audit_now_path(&format!("dst={dst}&port={port}&window=10m")),
                    None,
                )
                .json();
            let dropped = answer["flows"].as_array().into_iter().flatten().any(|f| {
                f["verdict"] == "dropped-policy" && f["slice"] == "pl_nat" && f["sliver"] == "a"
            });
            if dropped {
                break;
            }
            assert!(
                audited.elapsed() < Duration::from_secs(60),
                "{dst}:{port}: {answer}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // A complaint quoting the node's address and source port finds the slice, and the
    // flow shows its public side.
    let answer = d
        .call(
            "GET",
            &audit_now_path(&format!(
                "dst=198.51.100.2&public_port={public_port}&window=10m"
            )),
            None,
        )
        .json();
    let flows: Vec<&Value> = answer["flows"].as_array().into_iter().flatten().collect();
    assert_eq!(flows.len(), 1, "{answer}");
    assert_eq!(flows[0]["sliver"], "a");
    assert_eq!(flows[0]["slice"], "pl_nat");
    assert_eq!(flows[0]["public"], format!("198.51.100.1:{public_port}"));
    let cli = e2e::run::run(
        [
            "audit",
            "query",
            "--state-dir",
            dir.path().join("state").to_str().expect("utf8"),
            "--dst",
            "198.51.100.2",
            "--public-port",
            &public_port,
            "--at",
            &e2e::daemon::now_rfc3339(),
            "--window",
            "10m",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(cli.code(), 0, "{cli:?}");
    assert!(cli.stdout.contains("pl_nat"), "{}", cli.stdout);
    assert!(
        cli.stdout.contains(&format!("198.51.100.1:{public_port}")),
        "{}",
        cli.stdout
    );
    // A complaint about the outside address finds the slice.
    let answer = d
        .call(
            "GET",
            &audit_now_path("dst=198.51.100.2&port=8000&window=10m"),
            None,
        )
        .json();
    let who: Vec<(Value, Value)> = answer["slivers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["slice"].clone(), s["sliver"].clone()))
        .collect();
    assert_eq!(who, vec![(json!("pl_nat"), json!("a"))], "{answer}");
    d.stop();
}
