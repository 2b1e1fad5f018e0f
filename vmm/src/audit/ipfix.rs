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

use super::record::{Direction, FlowRecord, Verdict};

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
#[path = "ipfix_tests.rs"]
mod tests;
