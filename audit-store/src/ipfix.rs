//! IPFIX export (RFC 7011), written as an IPFIX file (RFC 5655): a sequence of messages of at
//! most 1400 bytes (so each also fits one UDP datagram to a collector such as `nfcapd`).
//!
//! The first message carries the templates: 256 for IPv4 flows, 257 for IPv6, 258 for non-IP
//! frames, and options template 259 (scope ingressVRFID → VRFname, 32 bytes NUL-padded, the
//! fixed size nfcapd expects) with the slice names given up front; a slice not named there
//! is named just before its first flow. Names come before all flows because nfcapd counts
//! only flow records in its sequence check.
//!
//! The Observation Point is the node's side of the sliver's NIC: the port a router would have
//! toward the sliver. So the packets a guest sends are received there: `flowDirection` (61)
//! 0 (ingress) and `ingressVRFID` (234) the slice's id; the packets it receives are sent
//! there: `flowDirection` 1 (egress) and `egressVRFID` (235) the slice's id; the other VRF id
//! is 0, the default (flowDirection: RFC 7012; the VRF elements: IANA's IPFIX registry).
//! Counts: `octetDeltaCount` (1) counts the IP packets ("IP header(s) and IP payload", RFC
//! 5102), without the Ethernet header and VLAN tags; `layer2OctetDeltaCount` (352, IANA's
//! registry) counts whole frames; non-IP flows carry only the latter. Times are
//! `flowStart/EndMilliseconds` (152/153, dateTimeMilliseconds: ms since the Unix epoch, RFC
//! 7011 section 6.1). The verdict is `forwardingStatus` (89, RFC 7270, see
//! [`forwarding_status`]).

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

/// IANA IPFIX Information Element ids (https://www.iana.org/assignments/ipfix).
pub mod ie {
    /// octetDeltaCount: IP header(s) and payload, octets.
    pub const OCTET_DELTA_COUNT: u16 = 1;
    /// packetDeltaCount.
    pub const PACKET_DELTA_COUNT: u16 = 2;
    /// protocolIdentifier.
    pub const PROTOCOL: u16 = 4;
    /// tcpControlBits (unsigned16 since RFC 7125).
    pub const TCP_CONTROL_BITS: u16 = 6;
    /// sourceTransportPort.
    pub const SOURCE_PORT: u16 = 7;
    /// sourceIPv4Address.
    pub const SOURCE_IPV4: u16 = 8;
    /// destinationTransportPort.
    pub const DESTINATION_PORT: u16 = 11;
    /// destinationIPv4Address.
    pub const DESTINATION_IPV4: u16 = 12;
    /// sourceIPv6Address.
    pub const SOURCE_IPV6: u16 = 27;
    /// destinationIPv6Address.
    pub const DESTINATION_IPV6: u16 = 28;
    /// flowDirection: 0 ingress, 1 egress.
    pub const FLOW_DIRECTION: u16 = 61;
    /// forwardingStatus (RFC 7270).
    pub const FORWARDING_STATUS: u16 = 89;
    /// flowStartMilliseconds.
    pub const FLOW_START_MS: u16 = 152;
    /// flowEndMilliseconds.
    pub const FLOW_END_MS: u16 = 153;
    /// ingressVRFID.
    pub const INGRESS_VRFID: u16 = 234;
    /// egressVRFID.
    pub const EGRESS_VRFID: u16 = 235;
    /// VRFname.
    pub const VRF_NAME: u16 = 236;
    /// ethernetType.
    pub const ETHERNET_TYPE: u16 = 256;
    /// layer2OctetDeltaCount: whole frames, octets.
    pub const LAYER2_OCTET_DELTA_COUNT: u16 = 352;
}

/// (information element, length) of the flow templates.
fn fields(template: u16) -> Vec<(u16, u16)> {
    let ip_counts = |src: u16, dst: u16, len: u16| {
        vec![
            (src, len),
            (dst, len),
            (ie::SOURCE_PORT, 2),
            (ie::DESTINATION_PORT, 2),
            (ie::PROTOCOL, 1),
            (ie::TCP_CONTROL_BITS, 2),
            (ie::PACKET_DELTA_COUNT, 8),
            (ie::OCTET_DELTA_COUNT, 8),
        ]
    };
    let mut f = match template {
        TEMPLATE_V4 => ip_counts(ie::SOURCE_IPV4, ie::DESTINATION_IPV4, 4),
        TEMPLATE_V6 => ip_counts(ie::SOURCE_IPV6, ie::DESTINATION_IPV6, 16),
        _ => vec![(ie::PACKET_DELTA_COUNT, 8)],
    };
    f.extend([
        (ie::LAYER2_OCTET_DELTA_COUNT, 8),
        (ie::FLOW_START_MS, 8),
        (ie::FLOW_END_MS, 8),
        (ie::INGRESS_VRFID, 4),
        (ie::EGRESS_VRFID, 4),
        (ie::FLOW_DIRECTION, 1),
        (ie::ETHERNET_TYPE, 2),
        (ie::FORWARDING_STATUS, 1),
    ]);
    f
}

/// The forwardingStatus (RFC 7270: the status in the top two bits, 1 forwarded
/// and 2 dropped, the reason in the low six) of a verdict:
///
/// | verdict | value | RFC 7270 meaning |
/// |---|---|---|
/// | forwarded | 64 | Forwarded, unknown reason |
/// | delayed (by the shaper, then sent) | 64 | Forwarded, unknown reason |
/// | dropped-spoof | 140 | Dropped, RPF (the source address check) |
/// | dropped-policy | 129 | Dropped, ACL deny |
/// | dropped-malformed | 128 | Dropped, unknown reason |
/// | dropped-backend | 128 | Dropped, unknown reason |
pub fn forwarding_status(v: Verdict) -> u8 {
    match v {
        Verdict::Forwarded | Verdict::Delayed => 64,
        Verdict::DroppedSpoof => 140,
        Verdict::DroppedPolicy => 129,
        Verdict::DroppedMalformed | Verdict::DroppedBackend => 128,
    }
}

/// flowDirection (61) at the Observation Point (see the module doc): 0 ingress for what the
/// guest sends, 1 egress for what it receives.
pub fn flow_direction(d: Direction) -> u8 {
    match d {
        Direction::Tx => 0,
        Direction::Rx => 1,
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
        for v in [
            TEMPLATE_VRF,
            2,
            1,
            ie::INGRESS_VRFID,
            4,
            ie::VRF_NAME,
            VRF_NAME_LEN as u16,
        ] {
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
            rec.extend_from_slice(&r.packets.to_be_bytes());
            rec.extend_from_slice(&r.ip_bytes.to_be_bytes());
        } else {
            rec.extend_from_slice(&r.packets.to_be_bytes());
        }
        let (ingress, egress) = match r.direction {
            Direction::Tx => (r.slice_id, 0),
            Direction::Rx => (0, r.slice_id),
        };
        for v in [r.bytes, r.first_ns / 1_000_000, r.last_ns / 1_000_000] {
            rec.extend_from_slice(&v.to_be_bytes());
        }
        rec.extend_from_slice(&ingress.to_be_bytes());
        rec.extend_from_slice(&egress.to_be_bytes());
        rec.push(flow_direction(r.direction));
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
            // Element ids are IANA's (https://www.iana.org/assignments/ipfix), written out
            // here rather than taken from the `ie` module under test.
            assert_eq!(num(&d[&2]), r.packets, "packetDeltaCount");
            assert_eq!(
                num(&d[&352]),
                r.bytes,
                "layer2OctetDeltaCount: whole frames"
            );
            assert_eq!(
                num(&d[&152]),
                r.first_ns / 1_000_000,
                "ms since the Unix epoch"
            );
            assert_eq!(num(&d[&153]), r.last_ns / 1_000_000);
            assert_eq!(num(&d[&256]), u64::from(r.ethertype));
            // RFC 7270's forwardingStatus: 64 = forwarded (unknown reason), 128 = dropped (unknown),
            // 129 = dropped (ACL deny), 140 = dropped (RPF).
            let status = match r.verdict {
                Verdict::Forwarded | Verdict::Delayed => 64,
                Verdict::DroppedSpoof => 140,
                Verdict::DroppedPolicy => 129,
                Verdict::DroppedMalformed | Verdict::DroppedBackend => 128,
            };
            assert_eq!(num(&d[&89]), status, "{:?}", r.verdict);
            // RFC 7012's flowDirection: 0 = ingress, 1 = egress, at the
            // Observation Point (the node's side of the sliver's NIC).
            let (ingress, egress, direction) = (num(&d[&234]), num(&d[&235]), num(&d[&61]));
            match r.direction {
                Direction::Tx => {
                    assert_eq!((ingress, egress, direction), (u64::from(r.slice_id), 0, 0))
                }
                Direction::Rx => {
                    assert_eq!((ingress, egress, direction), (0, u64::from(r.slice_id), 1))
                }
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
                assert_eq!(d[&6].len(), 2, "tcpControlBits is unsigned16 (RFC 7125)");
                assert_eq!(num(&d[&6]), u64::from(r.tcp_flags));
                assert_eq!(
                    num(&d[&1]),
                    r.ip_bytes,
                    "octetDeltaCount: IP headers and payload, no Ethernet header (RFC 7012)"
                );
                assert!(r.ip_bytes < r.bytes);
            } else {
                assert!(!d.contains_key(&1), "no IP octets in a non-IP flow");
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
