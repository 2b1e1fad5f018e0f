//! IPFIX export (RFC 7011), written as an IPFIX file (RFC 5655): a sequence of messages of at
//! most 1400 bytes (so each also fits one UDP datagram to a collector such as `nfcapd`).
//!
//! The first message carries the templates: 256 for IPv4 flows, 257 for IPv6, 258 for non-IP
//! frames, and options template 259 (scope ingressVRFID → VRFname, 32 bytes NUL-padded, the
//! fixed size nfcapd expects) with the slice names given up front; a slice not named there
//! is named just before its first flow. Names come before all flows because nfcapd counts
//! only flow records in its sequence check. The slice id goes in ingressVRFID (234) for flows to
//! the guest (Rx) and egressVRFID (235) for flows from it (Tx); the verdict in
//! forwardingStatus (89, RFC 7270 codes, see [`forwarding_status`]).

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::IpAddr;

use packet::{Direction, Verdict};

use super::record::FlowRecord;

/// Largest message written.
pub const MAX_MESSAGE: usize = 1400;
const HEADER: usize = 16;
/// Template ids.
pub const TEMPLATE_V4: u16 = 256;
/// IPv6 flows.
pub const TEMPLATE_V6: u16 = 257;
/// Non-IP frames.
pub const TEMPLATE_L2: u16 = 258;
/// Options: slice id → slice name.
pub const TEMPLATE_VRF: u16 = 259;
/// Bytes of VRFname.
pub const VRF_NAME_LEN: usize = 32;

/// (information element, length) of the flow templates.
fn fields(template: u16) -> Vec<(u16, u16)> {
    let mut f = match template {
        TEMPLATE_V4 => vec![(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 2)],
        TEMPLATE_V6 => vec![(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 2)],
        _ => vec![],
    };
    // packetDeltaCount, octetDeltaCount, flowStart/EndMilliseconds, ingress/egressVRFID,
    // ethernetType, forwardingStatus.
    f.extend([
        (2, 8),
        (1, 8),
        (152, 8),
        (153, 8),
        (234, 4),
        (235, 4),
        (256, 2),
        (89, 1),
    ]);
    f
}

/// RFC 7270 forwardingStatus of a verdict: 64 forwarded; dropped 138 (policer) when
/// throttled, 140 (reverse-path check) for spoofing, 128 (unknown reason) when malformed.
pub fn forwarding_status(v: Verdict) -> u8 {
    match v {
        Verdict::Forwarded => 64,
        Verdict::Throttled => 138,
        Verdict::DroppedSpoof => 140,
        Verdict::DroppedMalformed => 128,
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IpfixStats {
    /// Messages.
    pub messages: u64,
    /// Flow records.
    pub flows: u64,
    /// Slice-name option records.
    pub slices: u64,
}

/// Streams flow records into IPFIX messages.
#[derive(Debug)]
pub struct IpfixWriter<W: Write> {
    out: W,
    domain: u32,
    export_time: u32,
    /// Data records sent before the current message (the header's sequence number).
    sequence: u32,
    msg: Vec<u8>,
    /// Data records in the current message.
    in_msg: u32,
    /// Start of the open set in `msg` and its id.
    set: Option<(usize, u16)>,
    named: HashSet<u32>,
    stats: IpfixStats,
}

impl<W: Write> IpfixWriter<W> {
    /// A writer for observation domain `domain`, stamping `export_time` (Unix seconds); the
    /// first message names the `slices` (id, name).
    pub fn new(
        out: W,
        domain: u32,
        export_time: u32,
        slices: &[(u32, String)],
    ) -> io::Result<Self> {
        let mut w = IpfixWriter {
            out,
            domain,
            export_time,
            sequence: 0,
            msg: Vec::with_capacity(MAX_MESSAGE),
            in_msg: 0,
            set: None,
            named: HashSet::new(),
            stats: IpfixStats::default(),
        };
        w.start_message();
        w.write_templates();
        for (id, name) in slices {
            w.name_slice(*id, name)?;
        }
        // Flows start in the next message: nfcapd resynchronises its sequence check on the
        // first message with flows, and does not count option records.
        w.send()?;
        Ok(w)
    }

    fn start_message(&mut self) {
        self.msg.clear();
        self.msg.extend_from_slice(&10u16.to_be_bytes());
        self.msg.extend_from_slice(&[0, 0]); // length, set on send
        self.msg.extend_from_slice(&self.export_time.to_be_bytes());
        self.msg.extend_from_slice(&self.sequence.to_be_bytes());
        self.msg.extend_from_slice(&self.domain.to_be_bytes());
        self.in_msg = 0;
    }

    fn write_templates(&mut self) {
        self.open_set(2);
        for t in [TEMPLATE_V4, TEMPLATE_V6, TEMPLATE_L2] {
            let f = fields(t);
            self.put16(t);
            self.put16(f.len() as u16);
            for (ie, len) in f {
                self.put16(ie);
                self.put16(len);
            }
        }
        self.close_set();
        self.open_set(3);
        // Options template: 2 fields, 1 of them scope: ingressVRFID, VRFname.
        for v in [TEMPLATE_VRF, 2, 1, 234, 4, 236, VRF_NAME_LEN as u16] {
            self.put16(v);
        }
        self.close_set();
    }

    fn put16(&mut self, v: u16) {
        self.msg.extend_from_slice(&v.to_be_bytes());
    }

    fn open_set(&mut self, id: u16) {
        self.set = Some((self.msg.len(), id));
        self.put16(id);
        self.put16(0);
    }

    fn close_set(&mut self) {
        if let Some((start, _)) = self.set.take() {
            let len = (self.msg.len() - start) as u16;
            self.msg[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Send the current message if it holds anything.
    fn send(&mut self) -> io::Result<()> {
        self.close_set();
        if self.msg.len() > HEADER {
            let len = self.msg.len() as u16;
            self.msg[2..4].copy_from_slice(&len.to_be_bytes());
            self.out.write_all(&self.msg)?;
            self.stats.messages += 1;
            self.sequence = self.sequence.wrapping_add(self.in_msg);
        }
        self.start_message();
        Ok(())
    }

    /// Append one data record of `template` (bytes `rec`), opening a set or message as needed.
    fn data(&mut self, template: u16, rec: &[u8]) -> io::Result<()> {
        let need = rec.len()
            + if matches!(self.set, Some((_, t)) if t == template) {
                0
            } else {
                4
            };
        if self.msg.len() + need > MAX_MESSAGE {
            self.send()?;
        }
        if !matches!(self.set, Some((_, t)) if t == template) {
            self.close_set();
            self.open_set(template);
        }
        self.msg.extend_from_slice(rec);
        self.in_msg += 1;
        Ok(())
    }

    /// An options record naming slice `id` (the name cut to 31 bytes, NUL-padded).
    fn name_slice(&mut self, id: u32, name: &str) -> io::Result<()> {
        if !self.named.insert(id) {
            return Ok(());
        }
        let mut cut = name.len().min(VRF_NAME_LEN - 1);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut rec = id.to_be_bytes().to_vec();
        rec.extend_from_slice(&name.as_bytes()[..cut]);
        rec.resize(4 + VRF_NAME_LEN, 0);
        self.data(TEMPLATE_VRF, &rec)?;
        self.stats.slices += 1;
        Ok(())
    }

    /// Export one flow (preceded by its slice's name if that was not given up front).
    pub fn add(&mut self, r: &FlowRecord) -> io::Result<()> {
        self.name_slice(r.slice_id, &r.slice)?;
        let mut rec = Vec::with_capacity(96);
        let template = match (r.src, r.dst) {
            (Some(IpAddr::V4(s)), Some(IpAddr::V4(d))) => {
                rec.extend_from_slice(&s.octets());
                rec.extend_from_slice(&d.octets());
                TEMPLATE_V4
            }
            (Some(IpAddr::V6(s)), Some(IpAddr::V6(d))) => {
                rec.extend_from_slice(&s.octets());
                rec.extend_from_slice(&d.octets());
                TEMPLATE_V6
            }
            _ => TEMPLATE_L2,
        };
        if template != TEMPLATE_L2 {
            rec.extend_from_slice(&r.src_port.to_be_bytes());
            rec.extend_from_slice(&r.dst_port.to_be_bytes());
            rec.push(r.protocol);
            rec.extend_from_slice(&u16::from(r.tcp_flags).to_be_bytes());
        }
        let (ingress, egress) = match r.direction {
            Direction::Rx => (r.slice_id, 0),
            Direction::Tx => (0, r.slice_id),
        };
        for v in [
            r.packets,
            r.bytes,
            r.first_ns / 1_000_000,
            r.last_ns / 1_000_000,
        ] {
            rec.extend_from_slice(&v.to_be_bytes());
        }
        rec.extend_from_slice(&ingress.to_be_bytes());
        rec.extend_from_slice(&egress.to_be_bytes());
        rec.extend_from_slice(&r.ethertype.to_be_bytes());
        rec.push(forwarding_status(r.verdict));
        self.data(template, &rec)?;
        self.stats.flows += 1;
        Ok(())
    }

    /// Send the last message; returns the output and what was written.
    pub fn finish(mut self) -> io::Result<(W, IpfixStats)> {
        self.send()?;
        self.out.flush()?;
        Ok((self.out, self.stats))
    }
}

/// Split an IPFIX file into its messages (by each header's length); `None` if malformed.
pub fn split_messages(buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < HEADER || rest[..2] != 10u16.to_be_bytes() {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len < HEADER || len > rest.len() {
            return None;
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::synth;

    /// A decoded data record: information element → raw value.
    type Decoded = HashMap<u16, Vec<u8>>;

    /// A minimal IPFIX decoder: templates (sets 2 and 3) then data sets, as a collector would.
    fn decode(file: &[u8]) -> (Vec<(u16, Decoded)>, Vec<u32>) {
        let mut templates: HashMap<u16, Vec<(u16, u16)>> = HashMap::new();
        let mut records = Vec::new();
        let mut seqs = Vec::new();
        for msg in split_messages(file).expect("well-formed messages") {
            assert!(msg.len() <= MAX_MESSAGE);
            seqs.push(u32::from_be_bytes(msg[8..12].try_into().expect("4 bytes")));
            let mut at = HEADER;
            while at < msg.len() {
                let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
                let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
                let body = &msg[at + 4..at + len];
                let word = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                match id {
                    2 | 3 => {
                        let mut i = 0;
                        while i < body.len() {
                            let (tid, n) = (word(i), usize::from(word(i + 2)));
                            i += if id == 3 { 6 } else { 4 };
                            let f = (0..n)
                                .map(|k| (word(i + 4 * k), word(i + 4 * k + 2)))
                                .collect();
                            templates.insert(tid, f);
                            i += 4 * n;
                        }
                    }
                    _ => {
                        let f = &templates[&id];
                        let mut i = 0;
                        while i < body.len() {
                            let mut rec = Decoded::new();
                            for (ie, flen) in f {
                                let n = usize::from(*flen);
                                rec.insert(*ie, body[i..i + n].to_vec());
                                i += n;
                            }
                            records.push((id, rec));
                        }
                    }
                }
                at += len;
            }
        }
        (records, seqs)
    }

    fn num(v: &[u8]) -> u64 {
        v.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
    }

    #[test]
    fn flows_and_slice_names_decode_with_every_field() {
        let recs: Vec<FlowRecord> = (1..=200)
            .map(|i| synth::flow(i, "sliver-a", 1_795_834_800_000_000_000 + i * 1_000_000_000))
            .collect();
        let mut w =
            IpfixWriter::new(Vec::new(), 7, 1_795_834_800, &[(101, "slice1".into())]).expect("new");
        for r in &recs {
            w.add(r).expect("add");
        }
        let (file, stats) = w.finish().expect("finish");
        assert_eq!((stats.flows, stats.slices), (200, 3));
        assert!(stats.messages > 1 && stats.messages as usize >= file.len() / MAX_MESSAGE);
        let (decoded, seqs) = decode(&file);
        assert_eq!(seqs[0], 0);
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "sequence numbers grow"
        );
        let names: HashMap<u64, String> = decoded
            .iter()
            .filter(|(t, _)| *t == TEMPLATE_VRF)
            .map(|(_, r)| {
                assert_eq!(r[&236].len(), VRF_NAME_LEN);
                let name = r[&236].split(|b| *b == 0).next().expect("name");
                (
                    num(&r[&234]),
                    String::from_utf8(name.to_vec()).expect("utf8"),
                )
            })
            .collect();
        assert_eq!(names[&100], "slice0");
        assert_eq!(names[&102], "slice2");
        assert_eq!(
            decoded
                .iter()
                .position(|(t, r)| *t == TEMPLATE_VRF && num(&r[&234]) == 101),
            Some(0),
            "slices given up front are named in the first message, before any flow"
        );
        let flows: Vec<&(u16, Decoded)> =
            decoded.iter().filter(|(t, _)| *t != TEMPLATE_VRF).collect();
        assert_eq!(flows.len(), 200);
        for ((template, d), r) in flows.iter().zip(&recs) {
            assert_eq!(num(&d[&2]), r.packets);
            assert_eq!(num(&d[&1]), r.bytes);
            assert_eq!(num(&d[&152]), r.first_ns / 1_000_000);
            assert_eq!(num(&d[&153]), r.last_ns / 1_000_000);
            assert_eq!(num(&d[&256]), u64::from(r.ethertype));
            assert_eq!(num(&d[&89]), u64::from(forwarding_status(r.verdict)));
            let (ingress, egress) = (num(&d[&234]), num(&d[&235]));
            match r.direction {
                Direction::Rx => assert_eq!((ingress, egress), (u64::from(r.slice_id), 0)),
                Direction::Tx => assert_eq!((ingress, egress), (0, u64::from(r.slice_id))),
            }
            match (r.src, r.dst) {
                (Some(IpAddr::V4(s)), Some(IpAddr::V4(dst))) => {
                    assert_eq!(*template, TEMPLATE_V4);
                    assert_eq!(d[&8], s.octets());
                    assert_eq!(d[&12], dst.octets());
                }
                (Some(IpAddr::V6(s)), Some(IpAddr::V6(dst))) => {
                    assert_eq!(*template, TEMPLATE_V6);
                    assert_eq!(d[&27], s.octets());
                    assert_eq!(d[&28], dst.octets());
                }
                _ => assert_eq!(*template, TEMPLATE_L2),
            }
            if *template != TEMPLATE_L2 {
                assert_eq!(num(&d[&7]), u64::from(r.src_port));
                assert_eq!(num(&d[&11]), u64::from(r.dst_port));
                assert_eq!(num(&d[&4]), u64::from(r.protocol));
                assert_eq!(num(&d[&6]), u64::from(r.tcp_flags));
            }
        }
    }

    #[test]
    fn an_empty_export_is_just_the_templates_and_bad_files_are_refused() {
        let (file, stats) = IpfixWriter::new(Vec::new(), 1, 0, &[])
            .expect("new")
            .finish()
            .expect("finish");
        assert_eq!(stats.messages, 1);
        assert_eq!(split_messages(&file).expect("split").len(), 1);
        assert!(split_messages(&file[..file.len() - 1]).is_none());
        assert!(split_messages(b"\x00\x09 not ipfix at all").is_none());
    }
}
