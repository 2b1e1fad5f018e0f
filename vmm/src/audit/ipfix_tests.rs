use std::collections::HashMap;

use super::*;
use crate::audit::synth;

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
    let flows: Vec<&(u16, Decoded)> = decoded.iter().filter(|(t, _)| *t != TEMPLATE_VRF).collect();
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
