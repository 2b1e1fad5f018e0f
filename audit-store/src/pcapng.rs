//! pcapng (draft-ietf-opsawg-pcapng) writer for the capture rings: one Interface Description
//! Block per sliver NIC (`if_name` `<sliver>/eth<N>`, ns timestamps), one Enhanced Packet
//! Block per packet with its direction in `epb_flags` (as the guest's interface sees it:
//! what the guest sends is outbound, 2; what it receives inbound, 1), its verdict as an
//! `opt_comment` (`verdict=dropped-spoof`) and in `epb_verdict` (Linux TC action: 0 OK for
//! every packet that went on, 2 SHOT for every drop; see [`tc_action`]).

use std::io::{self, Write};

use packet::{Direction, Verdict};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const EPB_VERDICT: u16 = 7;
const VERDICT_TYPE_TC: u8 = 1;

/// `TC_ACT_OK` of Linux's `include/uapi/linux/pkt_cls.h`: the packet goes on.
pub const TC_ACT_OK: u64 = 0;
/// `TC_ACT_SHOT` of `pkt_cls.h`: the packet is dropped.
pub const TC_ACT_SHOT: u64 = 2;

/// The Linux TC action recorded in `epb_verdict` (verdict type 1, "Linux eBPF TC", of the
/// pcapng draft's `epb_verdict` option): `TC_ACT_OK` for every packet that went on, including
/// one that first waited for the shaper (it was delayed, not dropped or queued away);
/// `TC_ACT_SHOT` for every drop.
pub fn tc_action(v: Verdict) -> u64 {
    match v {
        Verdict::Forwarded | Verdict::Delayed => TC_ACT_OK,
        Verdict::DroppedSpoof
        | Verdict::DroppedMalformed
        | Verdict::DroppedPolicy
        | Verdict::DroppedBackend => TC_ACT_SHOT,
    }
}

/// One packet to write.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Interface id returned by [`PcapngWriter::interface`].
    pub interface: u32,
    /// ns since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// Captured bytes.
    pub data: &'a [u8],
    /// Seen from the guest: Tx is outbound on its NIC, Rx inbound.
    pub direction: Direction,
    /// What the VMM did with it.
    pub verdict: Verdict,
}

/// Writes a pcapng section.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
}

fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl<W: Write> PcapngWriter<W> {
    /// Start a section (writes the Section Header Block).
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        option(&mut body, SHB_USERAPPL, b"slicevisor");
        option(&mut body, OPT_END, &[]);
        write_block(&mut out, SHB, &body)?;
        Ok(PcapngWriter { out, interfaces: 0 })
    }

    /// Describe an Ethernet interface named `name`; returns its id for [`Packet::interface`].
    pub fn interface(&mut self, name: &str, snaplen: u32) -> io::Result<u32> {
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&snaplen.to_le_bytes());
        option(&mut body, IF_NAME, name.as_bytes());
        option(&mut body, IF_TSRESOL, &[9]);
        option(&mut body, OPT_END, &[]);
        write_block(&mut self.out, IDB, &body)?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Write one Enhanced Packet Block.
    pub fn packet(&mut self, p: &Packet<'_>) -> io::Result<()> {
        let mut body = Vec::with_capacity(p.data.len() + 96);
        body.extend_from_slice(&p.interface.to_le_bytes());
        body.extend_from_slice(&((p.ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(p.ts_ns as u32).to_le_bytes());
        body.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
        body.extend_from_slice(&p.orig_len.to_le_bytes());
        body.extend_from_slice(p.data);
        pad(&mut body);
        let comment = format!("verdict={}", p.verdict.as_str());
        option(&mut body, OPT_COMMENT, comment.as_bytes());
        let flags: u32 = match p.direction {
            Direction::Rx => 1,
            Direction::Tx => 2,
        };
        option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
        let mut verdict = vec![VERDICT_TYPE_TC];
        verdict.extend_from_slice(&tc_action(p.verdict).to_le_bytes());
        option(&mut body, EPB_VERDICT, &verdict);
        option(&mut body, OPT_END, &[]);
        write_block(&mut self.out, EPB, &body)
    }

    /// Flush and return the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn write_block(out: &mut impl Write, kind: u32, body: &[u8]) -> io::Result<()> {
    let len = (12 + body.len()) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&len.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk the blocks: (type, body) with the trailing length checked.
    fn blocks(buf: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4"));
            let (kind, len) = (word(at), word(at + 4) as usize);
            assert_eq!(len % 4, 0);
            assert_eq!(word(at + len - 4) as usize, len, "trailing length");
            out.push((kind, buf[at + 8..at + len - 4].to_vec()));
            at += len;
        }
        out
    }

    #[test]
    fn blocks_are_well_formed_and_carry_the_verdict() {
        let mut w = PcapngWriter::new(Vec::new()).expect("shb");
        assert_eq!(w.interface("alpha/eth0", 128).expect("idb"), 0);
        assert_eq!(w.interface("alpha/eth1", 128).expect("idb"), 1);
        let data = [0xabu8; 61];
        w.packet(&Packet {
            interface: 1,
            ts_ns: 1_795_834_800_123_456_789,
            orig_len: 1500,
            data: &data,
            direction: Direction::Tx,
            verdict: Verdict::DroppedSpoof,
        })
        .expect("epb");
        let buf = w.finish().expect("finish");
        let b = blocks(&buf);
        assert_eq!(
            b.iter().map(|x| x.0).collect::<Vec<_>>(),
            [SHB, IDB, IDB, EPB]
        );
        assert!(b[1].1.windows(10).any(|w| w == b"alpha/eth0"));
        let epb = &b[3].1;
        assert_eq!(u32::from_le_bytes(epb[0..4].try_into().expect("4")), 1);
        let ts = (u64::from(u32::from_le_bytes(epb[4..8].try_into().expect("4"))) << 32)
            | u64::from(u32::from_le_bytes(epb[8..12].try_into().expect("4")));
        assert_eq!(ts, 1_795_834_800_123_456_789);
        assert_eq!(&epb[20..81], &data[..]);
        assert!(epb.windows(21).any(|w| w == b"verdict=dropped-spoof"));
        // epb_flags (option 2, draft-ietf-opsawg-pcapng, Enhanced Packet Block options): bits 0-1 = 2, outbound.
        let flags = [2u8, 0, 4, 0, 2, 0, 0, 0];
        assert!(epb.windows(8).any(|w| w == flags), "epb_flags outbound");
        // epb_verdict (option 7): type 1 (Linux eBPF TC) then TC_ACT_SHOT, which
        // /usr/include/linux/pkt_cls.h defines as 2, as a 64-bit little-endian value.
        let verdict = [7u8, 0, 9, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0];
        assert!(epb.windows(13).any(|w| w == verdict), "epb_verdict SHOT");
    }

    #[test]
    fn tc_actions_are_pkt_cls_values() {
        // include/uapi/linux/pkt_cls.h: TC_ACT_OK 0, TC_ACT_SHOT 2. A packet the shaper only
        // delayed went on: OK, never SHOT (dropped) or QUEUED (5, taken away).
        for (v, want) in [
            (Verdict::Forwarded, 0),
            (Verdict::Delayed, 0),
            (Verdict::DroppedSpoof, 2),
            (Verdict::DroppedPolicy, 2),
            (Verdict::DroppedMalformed, 2),
            (Verdict::DroppedBackend, 2),
        ] {
            assert_eq!(tc_action(v), want, "{v:?}");
        }
        assert_eq!(Verdict::ALL.len(), 6, "every verdict has a row above");
    }
}
