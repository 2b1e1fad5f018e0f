//! The public side of slivers' connections: for each connection a sliver opened through the
//! node's masquerade, the address and port the outside saw (from the kernel's conntrack
//! events, written by the node daemon), one JSON object per line in `nat.jsonl` of the
//! sliver's audit directory (rotated at [`ROTATE_BYTES`] to `nat.jsonl.1`). A query joins
//! them to the sliver's TX flows by protocol, addresses, ports and time, so a complaint that
//! quotes the node's address and source port finds the slice.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The log's file name in a sliver's audit directory.
pub const NAT_FILE: &str = "nat.jsonl";
/// The log is rotated at this size (16 MiB; with its predecessor at most 32 MiB).
pub const ROTATE_BYTES: u64 = 16 << 20;
/// How far a mapping's time may lie outside its flow's first and last packet (ns): the
/// conntrack event comes when the first packet has passed the node.
const SLACK_NS: u64 = 2_000_000_000;

/// One connection the node translated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRecord {
    /// When the connection was confirmed, ns since the Unix epoch.
    pub time_ns: u64,
    /// IANA protocol number.
    pub protocol: u8,
    /// The sliver's address and port.
    pub src: IpAddr,
    /// The sliver's port.
    pub src_port: u16,
    /// The outside address.
    pub dst: IpAddr,
    /// The outside port.
    pub dst_port: u16,
    /// The node's address the outside saw.
    pub public_addr: IpAddr,
    /// The node's port the outside saw.
    pub public_port: u16,
}

impl NatRecord {
    /// Whether this mapping is the one of a TX flow with these fields, seen between
    /// `first_ns` and `last_ns`.
    #[allow(clippy::too_many_arguments)]
    pub fn is_of(
        &self,
        protocol: u8,
        src: Option<IpAddr>,
        src_port: u16,
        dst: Option<IpAddr>,
        dst_port: u16,
        first_ns: u64,
        last_ns: u64,
    ) -> bool {
        self.protocol == protocol
            && Some(self.src) == src
            && self.src_port == src_port
            && Some(self.dst) == dst
            && self.dst_port == dst_port
            && self.time_ns.saturating_add(SLACK_NS) >= first_ns
            && self.time_ns <= last_ns.saturating_add(SLACK_NS)
    }
}

/// Append `record` to the log in `dir` (made if missing), rotating it when full.
///
/// # Errors
/// The directory or file cannot be written.
pub fn append(dir: &Path, record: &NatRecord) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(NAT_FILE);
    if fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_BYTES) {
        fs::rename(&path, dir.join(format!("{NAT_FILE}.1")))?;
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?
        .write_all(&line)
}

/// Every record in `dir`'s log, oldest first; lines that do not parse (a torn last line)
/// are skipped.
pub fn read(dir: &Path) -> Vec<NatRecord> {
    let mut all = Vec::new();
    for name in [format!("{NAT_FILE}.1"), NAT_FILE.to_string()] {
        let Ok(file) = File::open(dir.join(name)) else {
            continue;
        };
        all.extend(
            BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str(&l).ok()),
        );
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(public_port: u16, time_ns: u64) -> NatRecord {
        NatRecord {
            time_ns,
            protocol: 6,
            src: "10.99.0.2".parse().expect("ip"),
            src_port: 40000,
            dst: "198.51.100.2".parse().expect("ip"),
            dst_port: 80,
            public_addr: "198.51.100.1".parse().expect("ip"),
            public_port,
        }
    }

    #[test]
    fn appended_records_read_back_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let sliver = dir.path().join("audit/a");
        append(&sliver, &record(1, 10)).expect("append");
        append(&sliver, &record(2, 20)).expect("append");
        let mut f = OpenOptions::new()
            .append(true)
            .open(sliver.join(NAT_FILE))
            .expect("open");
        f.write_all(b"{\"time_ns\":3").expect("torn");
        assert_eq!(read(&sliver), vec![record(1, 10), record(2, 20)]);
        assert!(read(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn a_mapping_belongs_to_the_flow_with_its_tuple_and_time() {
        let r = record(5, 10_000_000_000);
        let (src, dst) = (Some(r.src), Some(r.dst));
        assert!(r.is_of(6, src, 40000, dst, 80, 9_000_000_000, 20_000_000_000));
        assert!(r.is_of(6, src, 40000, dst, 80, 11_000_000_000, 20_000_000_000));
        assert!(!r.is_of(6, src, 40000, dst, 80, 13_000_000_000, 20_000_000_000));
        assert!(!r.is_of(17, src, 40000, dst, 80, 9_000_000_000, 20_000_000_000));
        assert!(!r.is_of(6, src, 40001, dst, 80, 9_000_000_000, 20_000_000_000));
    }
}
