//! Exports read back by the tools operators use: IPFIX through `nfcapd` into `nfdump`, the
//! slice-name options through `tshark`'s IPFIX dissector, and pcapng through `tshark`. Also
//! `slicevisor audit query` end to end. (Debian packages nfdump and tshark.)

use std::collections::BTreeMap;
use std::net::{IpAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use audit_store::pcapng::{Packet, PcapngWriter};
use audit_store::{ipfix, synth, FlowRecord};
use e2e::netns::NetNs;
use e2e::run::{self, wait_with_timeout, ChildGuard};
use packet::{Direction, Verdict};

const HELPER: &str = env!("CARGO_BIN_EXE_audit_writer");
/// 2026-11-28T03:00:00Z.
const T0: u64 = 1_795_834_800_000_000_000;
const S: u64 = 1_000_000_000;
/// (sliver, records, first record's last packet).
const SLIVERS: [(&str, u64, u64); 2] = [("alpha", 200, T0), ("beta", 50, T0 + 100 * S)];

/// Record `i` of `sliver` as the helper's `fill` writes it.
fn expected(sliver: &str, i: u64, start: u64) -> FlowRecord {
    let mut r = synth::flow(i + 1, sliver, start + i * S);
    r.slice = format!("{sliver}-slice");
    r.slice_id = 700 + sliver.len() as u32;
    r
}

fn all_expected() -> Vec<FlowRecord> {
    SLIVERS
        .iter()
        .flat_map(|(s, n, start)| (0..*n).map(move |i| expected(s, i, *start)))
        .collect()
}

fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sliver, n, start) in SLIVERS {
        let out = Command::new(HELPER)
            .args(["fill", &dir.path().display().to_string(), sliver])
            .args([n.to_string(), start.to_string(), S.to_string()])
            .output()
            .expect("run audit_writer");
        assert!(out.status.success(), "{out:?}");
    }
    dir
}

fn tool(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs it)"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    out
}

fn export(state: &Path, args: &[&str]) -> run::Outcome {
    let mut all = vec![
        "audit",
        "export",
        "--state-dir",
        state.to_str().expect("utf8"),
    ];
    all.extend_from_slice(args);
    let out = run::run(all, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    out
}

/// Multiset of lines.
fn counted<I: IntoIterator<Item = String>>(lines: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l).or_insert(0) += 1;
    }
    m
}

fn addr_or_zero(a: Option<IpAddr>) -> String {
    a.map_or_else(|| "0.0.0.0".into(), |a| a.to_string())
}

#[test]
fn ipfix_export_reads_back_in_nfdump() {
    let state = state_dir();
    let file = state.path().join("flows.ipfix");
    export(state.path(), &["--ipfix", file.to_str().expect("utf8")]);
    let messages = std::fs::read(&file).expect("read export");
    let flowdir = tempfile::tempdir().expect("tempdir");
    let ns = NetNs::new("svaudit");
    let collector = ns
        .command("nfcapd")
        .args(["-b", "127.0.0.1", "-p", "9995", "-t", "3600", "-w"])
        .arg(flowdir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nfcapd (package nfdump)");
    let collector = ChildGuard::new(collector);
    wait_for_udp_port(&ns, 9995);
    let sent = ns.run_in(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let msgs = ipfix::split_messages(&messages).expect("IPFIX messages");
        for m in &msgs {
            sock.send_to(m, "127.0.0.1:9995").expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
        msgs.len()
    });
    assert!(sent > 5);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill() with a pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let out = wait_with_timeout(collector.take(), Duration::from_secs(10));
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(log.contains("Flows: 250"), "{log}");
    assert!(log.contains("Sequence Errors: 0"), "{log}");
    let nffile = std::fs::read_dir(flowdir.path())
        .expect("flow dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("nfcapd.2"))
        .expect("nfcapd wrote a file");
    let fmt = "fmt:%sa|%da|%sp|%dp|%pkt|%byt|%ivrf|%evrf|%dir|%flg|%tsr|%ter";
    // forwardingStatus is checked in tshark below: nfdump 1.7.1 does not keep IE 89 from
    // IPFIX (its %fwd prints 0 for every flow).
    let out = tool(
        "nfdump",
        &["-r", nffile.to_str().expect("utf8"), "-q", "-N", "-o", fmt],
    );
    let got = counted(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>().join("|")),
    );
    let want = counted(all_expected().iter().map(nfdump_line));
    assert_eq!(got, want);
}

/// Record `r` as nfdump prints it with the format above, each value derived from the
/// standards rather than from the exporter: bytes are IP octets (RFC 7012's octetDeltaCount:
/// "IP header(s) and IP payload", so no Ethernet header, VLAN tags or padding; the synthetic
/// frames carry no padding, so 14 bytes plus 4 per tag less per packet), the slice's id is the
/// ingress VRF of what the guest sends and the egress VRF of what it receives, with RFC
/// 7012's flowDirection 0 (ingress, nfdump's "I") and 1 (egress, "E").
fn nfdump_line(r: &FlowRecord) -> String {
    let (ivrf, evrf, dir) = match r.direction {
        Direction::Tx => (r.slice_id, 0, 'I'),
        Direction::Rx => (0, r.slice_id, 'E'),
    };
    let ip_bytes = match r.src {
        Some(_) => r.bytes - r.packets * (14 + 4 * u64::from(r.vlan_tags)),
        None => 0,
    };
    let ms = |ns: u64| format!("{}.{:03}", ns / S, (ns % S) / 1_000_000);
    format!(
        "{}|{}|{}|{}|{}|{ip_bytes}|{ivrf}|{evrf}|{dir}|{}|{}|{}",
        addr_or_zero(r.src),
        addr_or_zero(r.dst),
        r.src_port,
        r.dst_port,
        r.packets,
        tcp_flags(r.tcp_flags),
        ms(r.first_ns),
        ms(r.last_ns),
    )
}

/// TCP flags as nfdump's %flg prints them: the eight flag bits of the TCP header's byte 13
/// (RFC 9293 section 3.1, with CWR and ECE of RFC 3168) as "CEUAPRSF", '.' for a flag not set.
fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    let names = ['C', 'E', 'U', 'A', 'P', 'R', 'S', 'F'];
    for (i, c) in names.into_iter().enumerate() {
        let bit = 7 - i;
        s.push(if f & (1 << bit) != 0 { c } else { '.' });
    }
    s
}

fn wait_for_udp_port(ns: &NetNs, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns
            .command("ss")
            .args(["-Huln"])
            .output()
            .expect("ss (iproute2)");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on UDP port {port}");
}

/// The IPFIX messages of `ipfix_file` as UDP datagrams to port 4739 in a pcapng file.
fn ipfix_as_pcapng(ipfix_file: &[u8], out: &Path) {
    let f = std::fs::File::create(out).expect("create");
    let mut w = PcapngWriter::new(f).expect("pcapng");
    let iface = w.interface("lo", 65535).expect("idb");
    for (i, m) in ipfix::split_messages(ipfix_file)
        .expect("messages")
        .iter()
        .enumerate()
    {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        frame.extend_from_slice(&((20 + 8 + m.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        frame.extend_from_slice(&40000u16.to_be_bytes());
        frame.extend_from_slice(&4739u16.to_be_bytes());
        frame.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(m);
        let p = Packet {
            interface: iface,
            ts_ns: T0 + i as u64,
            orig_len: frame.len() as u32,
            data: &frame,
            direction: Direction::Tx,
            verdict: Verdict::Forwarded,
        };
        w.packet(&p).expect("epb");
    }
    w.finish().expect("finish");
}

#[test]
fn ipfix_slice_names_and_verdicts_decode_in_tshark() {
    let state = state_dir();
    let file = state.path().join("flows.ipfix");
    export(state.path(), &["--ipfix", file.to_str().expect("utf8")]);
    let wrapped = state.path().join("ipfix-over-udp.pcapng");
    ipfix_as_pcapng(&std::fs::read(&file).expect("read"), &wrapped);
    let fields = [
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ];
    let mut args = vec!["-r", wrapped.to_str().expect("utf8"), "-Y", "cflow.vrfname"];
    args.extend_from_slice(&fields);
    args.extend_from_slice(&["-e", "cflow.ingress_vrfid", "-e", "cflow.vrfname"]);
    let out = String::from_utf8_lossy(&tool("tshark", &args).stdout).into_owned();
    // One line per packet; the records of a packet are comma-separated in each column.
    let mut names = BTreeMap::new();
    for line in out.lines() {
        let (ids, vrf_names) = line.split_once('|').expect("two columns");
        names.extend(ids.split(',').zip(vrf_names.split(',')));
    }
    let want = BTreeMap::from([("704", "beta-slice"), ("705", "alpha-slice")]);
    assert_eq!(names, want, "{out}");
    // Each flow record's values, zipped across the columns (every template carries them all).
    let columns = [
        "cflow.forwarding_status",
        "cflow.direction",
        "cflow.layer2_octet_delta_count",
        "cflow.ingress_vrfid",
        "cflow.egress_vrfid",
        "cflow.ethernet_type",
    ];
    let mut args = vec![
        "-r",
        wrapped.to_str().expect("utf8"),
        "-Y",
        "cflow.layer2_octet_delta_count",
    ];
    args.extend_from_slice(&fields);
    for c in &columns {
        args.extend_from_slice(&["-e", c]);
    }
    let out = String::from_utf8_lossy(&tool("tshark", &args).stdout).into_owned();
    let mut got = Vec::new();
    for line in out.lines() {
        let cols: Vec<Vec<&str>> = line.split('|').map(|c| c.split(',').collect()).collect();
        assert_eq!(cols.len(), columns.len(), "{line}");
        for i in 0..cols[0].len() {
            got.push(cols.iter().map(|c| c[i]).collect::<Vec<_>>().join("|"));
        }
    }
    let recs = all_expected();
    let want = counted(recs.iter().map(|r| {
        // RFC 7270: forwardingStatus's top two bits, 1 forwarded, 2 dropped (a
        // packet the shaper delayed was forwarded). RFC 7012: flowDirection 0
        // ingress (what the guest sends arrives at the Observation Point), 1 egress. The
        // slice's id is the VRF the packet came in on or leaves by; the other VRF is 0.
        let status = match r.verdict {
            Verdict::Forwarded | Verdict::Delayed => 1,
            _ => 2,
        };
        let (dir, ivrf, evrf) = match r.direction {
            Direction::Tx => (0, r.slice_id, 0),
            Direction::Rx => (1, 0, r.slice_id),
        };
        format!("{status}|{dir}|{}|{ivrf}|{evrf}|{}", r.bytes, r.ethertype)
    }));
    assert_eq!(counted(got), want, "{out}");
    // The reasons: RFC 7270's forwarded "unknown" (0) and dropped "unknown" (0),
    // "ACL deny" (1) for the policy, "RPF" (12) for the source address check.
    let mut args = vec!["-r", wrapped.to_str().expect("utf8"), "-Y", "cflow.octets"];
    args.extend_from_slice(&fields);
    args.extend_from_slice(&["-e", "cflow.forwarding_status_forward_code"]);
    args.extend_from_slice(&["-e", "cflow.forwarding_status_drop_code"]);
    let out = String::from_utf8_lossy(&tool("tshark", &args).stdout).into_owned();
    let column = |i: usize| -> BTreeMap<String, usize> {
        counted(out.lines().flat_map(|l| {
            let col = l.split('|').nth(i).unwrap_or("");
            col.split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        }))
    };
    let n = |vs: &[Verdict]| recs.iter().filter(|r| vs.contains(&r.verdict)).count();
    let forwarded = n(&[Verdict::Forwarded, Verdict::Delayed]);
    assert_eq!(column(0), BTreeMap::from([("0".to_string(), forwarded)]));
    let mut drops = BTreeMap::new();
    for (code, verdicts) in [
        (
            "0",
            &[Verdict::DroppedMalformed, Verdict::DroppedBackend][..],
        ),
        ("1", &[Verdict::DroppedPolicy][..]),
        ("12", &[Verdict::DroppedSpoof][..]),
    ] {
        drops.insert(code.to_string(), n(verdicts));
    }
    assert_eq!(column(1), drops, "{out}");
}

fn tshark_packets(file: &Path) -> Vec<String> {
    let fields = [
        "frame.interface_name",
        "frame.comment",
        "frame.verdict.ebpf_tc",
        "frame.packet_flags_direction",
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "tcp.srcport",
        "frame.len",
        "frame.cap_len",
        "frame.time_epoch",
    ];
    let mut args = vec![
        "-r",
        file.to_str().expect("utf8"),
        "-T",
        "fields",
        "-E",
        "separator=|",
    ];
    for f in &fields {
        args.extend_from_slice(&["-e", f]);
    }
    let out = tool("tshark", &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// An address as tshark's (ip, ipv6) columns show it.
fn split_addr(a: Option<IpAddr>) -> (String, String) {
    match a {
        Some(IpAddr::V4(a)) => (a.to_string(), String::new()),
        Some(IpAddr::V6(a)) => (String::new(), a.to_string()),
        None => (String::new(), String::new()),
    }
}

/// The value of `#define NAME` in Linux's `pkt_cls.h` (package linux-libc-dev), the
/// definition of pcapng's "Linux eBPF TC" verdicts.
fn tc_act(name: &str) -> u64 {
    let header = std::fs::read_to_string("/usr/include/linux/pkt_cls.h")
        .expect("pkt_cls.h (scripts/test.sh installs linux-libc-dev)");
    header
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("{name} not defined as a number in pkt_cls.h"))
}

fn expected_packet(sliver: &str, r: &FlowRecord) -> String {
    let frame = synth::frame(r, 100);
    let (v4, v6) = split_addr(r.src);
    let (d4, d6) = split_addr(r.dst);
    let port = if r.src.is_some() {
        r.src_port.to_string()
    } else {
        String::new()
    };
    let tc = match r.verdict {
        Verdict::Forwarded | Verdict::Delayed => tc_act("TC_ACT_OK"),
        _ => tc_act("TC_ACT_SHOT"),
    };
    let dir = if r.direction == Direction::Rx { 1 } else { 2 };
    format!(
        "{sliver}/eth{}|verdict={}|{tc}|0x{dir:08x}|{v4}|{v6}|{d4}|{d6}|{port}|{}|{}|{}.{:09}",
        r.nic,
        r.verdict.as_str(),
        frame.len(),
        frame.len().min(128),
        r.last_ns / S,
        r.last_ns % S
    )
}

#[test]
fn pcapng_export_reads_back_in_tshark() {
    let state = state_dir();
    let file = state.path().join("headers.pcapng");
    let out = export(state.path(), &["--pcapng", file.to_str().expect("utf8")]);
    assert!(
        out.stdout.contains("250 packets on 4 sliver NICs"),
        "{}",
        out.stdout
    );
    let want = counted(SLIVERS.iter().flat_map(|(s, n, start)| {
        (0..*n).map(move |i| expected_packet(s, &expected(s, i, *start)))
    }));
    assert_eq!(counted(tshark_packets(&file)), want);
    // --since/--until keep the packets in the range: alpha 100..149 s and beta 0..49 s.
    let since = "2026-11-28T03:01:40Z";
    let until = "2026-11-28T03:02:29Z";
    let part = state.path().join("part.pcapng");
    export(
        state.path(),
        &[
            "--pcapng",
            part.to_str().expect("utf8"),
            "--since",
            since,
            "--until",
            until,
        ],
    );
    assert_eq!(tshark_packets(&part).len(), 100);
}

#[test]
fn query_answers_which_slice_and_sliver() {
    let state = state_dir();
    let dir = state.path().to_str().expect("utf8");
    // beta record 3 (seq 4): IPv4 10.0.0.4 -> 192.0.2.4, last packet T0+103 s.
    let r = expected("beta", 3, T0 + 100 * S);
    assert_eq!(r.dst, Some("192.0.2.4".parse().expect("ip")));
    let args = ["audit", "query", "--state-dir", dir, "--dst", "192.0.2.4"];
    let at = ["--at", "2026-11-28T03:01:43Z", "--window", "0s"];
    let table = run::run(args.iter().chain(&at), Duration::from_secs(30));
    assert_eq!(table.code(), 0, "{table:?}");
    let first_rows: Vec<&str> = table.stdout.lines().take(3).collect();
    assert!(first_rows[1].starts_with("SLICE"), "{}", table.stdout);
    assert!(
        first_rows[2].starts_with("beta-slice  704"),
        "{}",
        table.stdout
    );
    assert!(first_rows[2].contains("beta"));
    assert!(table.stdout.contains("10.0.0.4"), "{}", table.stdout);
    let json = run::run(
        args.iter().chain(&at).chain(&["--json"]),
        Duration::from_secs(30),
    );
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["slivers"][0]["sliver"], "beta");
    assert_eq!(v["slivers"][0]["slice_id"], 704);
    assert_eq!(v["flows"][0]["seq"], 4);
    assert_eq!(v["flows"][0]["verdict"], r.verdict.as_str());
    for (flag, bad) in [
        ("--at", "2026-11-28 03:01"),
        ("--window", "soon"),
        ("--dst", "192.0.2"),
        ("--port", "http"),
    ] {
        let mut argv = vec!["audit", "query", "--state-dir", dir, flag, bad];
        if flag != "--at" {
            argv.extend_from_slice(&["--at", "2026-11-28T03:01:43Z"]);
        }
        let out = run::run(&argv, Duration::from_secs(30));
        assert_eq!(out.code(), 1, "{out:?}");
        assert!(
            out.stderr.contains(&format!("error: {flag}: ")),
            "{}",
            out.stderr
        );
    }
    let out = run::run(
        [
            "audit",
            "query",
            "--state-dir",
            "/nonexistent",
            "--at",
            "2026-11-28T03:01:43Z",
        ],
        Duration::from_secs(30),
    );
    assert!(out.stderr.contains("--state-dir"), "{}", out.stderr);
    let out = run::run(
        ["audit", "export", "--state-dir", dir],
        Duration::from_secs(30),
    );
    assert!(out.stderr.contains("--ipfix/--pcapng"), "{}", out.stderr);
}
