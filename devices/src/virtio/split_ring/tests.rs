use std::mem::size_of;
use std::num::Wrapping;

use virtio_bindings::virtio_ring::{
    vring_desc, vring_used_elem, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const SIZE: u16 = 8;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_000)]).expect("guest memory")
}

fn queue_at(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(SIZE).expect("queue");
    q.set_size(SIZE);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_ready(true);
    q
}

fn ring(mem: &GuestMemoryMmap, event_idx: bool) -> SplitRing {
    SplitRing::new(&queue_at(DESC, AVAIL, USED), mem.clone(), event_idx).expect("ring")
}

/// Write descriptor `index` as `struct vring_desc` lays it out.
fn write_desc(mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(DESC + 16 * u64::from(index));
    mem.write_obj(addr.to_le(), at).expect("in guest memory");
    mem.write_obj(len.to_le(), at.unchecked_add(8))
        .expect("in guest memory");
    mem.write_obj(flags.to_le(), at.unchecked_add(12))
        .expect("in guest memory");
    mem.write_obj(next.to_le(), at.unchecked_add(14))
        .expect("in guest memory");
}

/// Make the chains `heads` available after `from` entries.
fn publish(mem: &GuestMemoryMmap, from: u16, heads: &[u16]) {
    for (i, &h) in heads.iter().enumerate() {
        let slot = (from as usize + i) % SIZE as usize;
        mem.write_obj(h.to_le(), GuestAddress(AVAIL + 4 + 2 * slot as u64))
            .expect("in guest memory");
    }
    let idx = from.wrapping_add(heads.len() as u16);
    mem.write_obj(idx.to_le(), GuestAddress(AVAIL + 2))
        .expect("in guest memory");
}

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(addr)).expect("in guest memory"))
}

fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    u32::from_le(mem.read_obj(GuestAddress(addr)).expect("in guest memory"))
}

#[test]
fn layout_matches_linux_virtio_ring_h() {
    assert_eq!(DESCRIPTOR_LEN, size_of::<vring_desc>());
    assert_eq!(USED_ENTRY_LEN, size_of::<vring_used_elem>());
    assert_eq!(AVAIL_ENTRY_LEN, size_of::<u16>());
}

#[test]
fn pops_chains_in_order_and_walks_their_descriptors() {
    let mem = memory();
    write_desc(&mem, 3, 0x8000, 100, VRING_DESC_F_NEXT as u16, 5);
    write_desc(&mem, 5, 0x9000, 200, VRING_DESC_F_WRITE as u16, 0);
    write_desc(&mem, 1, 0xa000, 300, 0, 7);
    publish(&mem, 0, &[3, 1]);
    let mut r = ring(&mem, false);
    assert_eq!(r.pop(), Ok(Some(3)));
    let descs: Vec<_> = r.descriptors(3).collect();
    assert_eq!(
        descs,
        vec![
            Ok(Descriptor {
                addr: GuestAddress(0x8000),
                len: 100,
                flags: VRING_DESC_F_NEXT as u16
            }),
            Ok(Descriptor {
                addr: GuestAddress(0x9000),
                len: 200,
                flags: VRING_DESC_F_WRITE as u16
            }),
        ]
    );
    assert!(!descs[0].expect("first").is_write_only());
    assert!(descs[1].expect("second").is_write_only());
    assert_eq!(r.pop(), Ok(Some(1)));
    // Without NEXT, `next` (7) is ignored.
    assert_eq!(r.descriptors(1).count(), 1);
    assert_eq!(r.pop(), Ok(None));
    r.unpop();
    assert_eq!(r.pop(), Ok(Some(1)));
    assert_eq!(r.next_avail(), Wrapping(2));
}

#[test]
fn loops_bad_next_and_indirect_descriptors_end_the_walk_with_an_error() {
    let mem = memory();
    write_desc(&mem, 0, 0x8000, 1, VRING_DESC_F_NEXT as u16, 1);
    write_desc(&mem, 1, 0x8000, 1, VRING_DESC_F_NEXT as u16, 0);
    write_desc(&mem, 2, 0x8000, 1, VRING_DESC_F_NEXT as u16, SIZE);
    write_desc(&mem, 3, 0x8000, 16, VRING_DESC_F_INDIRECT as u16, 0);
    let r = ring(&mem, false);
    let walk: Vec<_> = r.descriptors(0).collect();
    assert_eq!(walk.len(), usize::from(SIZE) + 1);
    assert_eq!(walk.last(), Some(&Err(BrokenChain::Loop)));
    let walk: Vec<_> = r.descriptors(2).collect();
    assert_eq!(walk, vec![Err(BrokenChain::NextPastTable(SIZE))]);
    let walk: Vec<_> = r.descriptors(3).collect();
    assert_eq!(walk, vec![Err(BrokenChain::Indirect)]);
}

#[test]
fn a_head_past_the_table_or_an_index_jump_is_an_error() {
    let mem = memory();
    publish(&mem, 0, &[SIZE]);
    let mut r = ring(&mem, false);
    assert_eq!(r.pop(), Err(RingError::HeadPastTable(SIZE)));
    mem.write_obj((SIZE + 1).to_le(), GuestAddress(AVAIL + 2))
        .expect("in guest memory");
    let mut r = ring(&mem, false);
    assert_eq!(r.pop(), Err(RingError::AvailIndexJump(SIZE + 1)));
    assert_eq!(r.avail_idx(), Err(RingError::AvailIndexJump(SIZE + 1)));
}

#[test]
fn used_entries_reach_the_driver_with_one_index_store() {
    let mem = memory();
    let mut r = ring(&mem, false);
    r.add_used(4, 64);
    r.add_used(6, 1500);
    // Written, not yet shown.
    assert_eq!(read_u32(&mem, USED + 4), 4);
    assert_eq!(read_u32(&mem, USED + 8), 64);
    assert_eq!(read_u32(&mem, USED + 12), 6);
    assert_eq!(read_u32(&mem, USED + 16), 1500);
    assert_eq!(read_u16(&mem, USED + 2), 0);
    assert!(r.publish_used());
    assert_eq!(read_u16(&mem, USED + 2), 2);
    // Nothing new: nothing to tell.
    assert!(!r.publish_used());
}

#[test]
fn without_event_idx_no_interrupt_suppresses_notifications() {
    let mem = memory();
    let mut r = ring(&mem, false);
    mem.write_obj(
        (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
        GuestAddress(AVAIL),
    )
    .expect("in guest memory");
    r.add_used(0, 0);
    assert!(!r.publish_used());
    assert_eq!(read_u16(&mem, USED + 2), 1);
    mem.write_obj(0u16, GuestAddress(AVAIL))
        .expect("in guest memory");
    r.add_used(1, 0);
    assert!(r.publish_used());
}

#[test]
fn with_event_idx_the_driver_is_notified_when_used_event_is_passed() {
    let mem = memory();
    let used_event = AVAIL + 4 + 2 * u64::from(SIZE);
    let mut r = ring(&mem, true);
    // used_event 2: notify once the entry at index 2 is used (the index passes 2).
    mem.write_obj(2u16.to_le(), GuestAddress(used_event))
        .expect("in guest memory");
    r.add_used(0, 0);
    r.add_used(1, 0);
    assert!(!r.publish_used(), "index 2 not passed yet");
    r.add_used(2, 0);
    r.add_used(3, 0);
    assert!(r.publish_used(), "2 lies among the entries published");
    r.add_used(4, 0);
    assert!(!r.publish_used(), "2 already passed");
    // Across the 16-bit wrap: vring_need_event(0xffff, new 0x0001, old 0xfffe) is true.
    let mut r = SplitRing::new(&wrapped_queue(0xfffe), mem.clone(), true).expect("in guest memory");
    mem.write_obj(0xffffu16.to_le(), GuestAddress(used_event))
        .expect("in guest memory");
    r.add_used(0, 0);
    r.add_used(1, 0);
    r.add_used(2, 0);
    assert!(r.publish_used());
    assert_eq!(read_u16(&mem, USED + 2), 1);
}

fn wrapped_queue(next_used: u16) -> Queue {
    let mut q = queue_at(DESC, AVAIL, USED);
    q.set_next_used(next_used);
    q
}

#[test]
fn enabling_notifications_writes_avail_event_and_looks_again() {
    let mem = memory();
    let avail_event = USED + 4 + 8 * u64::from(SIZE);
    write_desc(&mem, 0, 0x8000, 1, 0, 0);
    publish(&mem, 0, &[0]);
    let mut r = ring(&mem, true);
    assert_eq!(r.pop(), Ok(Some(0)));
    assert_eq!(r.enable_notification(), Ok(false));
    assert_eq!(read_u16(&mem, avail_event), 1);
    publish(&mem, 1, &[0]);
    assert_eq!(r.enable_notification(), Ok(true));
    // Without EVENT_IDX the used ring's flags say "notify me" (0).
    mem.write_obj(1u16.to_le(), GuestAddress(USED))
        .expect("in guest memory");
    let mut r = ring(&mem, false);
    assert_eq!(r.enable_notification(), Ok(true));
    assert_eq!(read_u16(&mem, USED), 0);
}

#[test]
fn areas_outside_memory_or_across_regions_are_refused_by_name() {
    let mem = memory();
    let err = SplitRing::new(&queue_at(0x20_000, AVAIL, USED), mem.clone(), false)
        .expect_err("must be refused");
    assert!(matches!(
        err,
        RingError::Area {
            area: "descriptor table",
            addr: 0x20_000,
            len: 128
        }
    ));
    // The used ring's last bytes past the end of memory.
    let err = SplitRing::new(&queue_at(DESC, AVAIL, 0x10_000 - 64), mem, false)
        .expect_err("must be refused");
    assert!(matches!(
        err,
        RingError::Area {
            area: "used ring",
            ..
        }
    ));
    assert!(err
        .to_string()
        .contains("used ring at guest address 0xffc0"));
    let two =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .expect("in guest memory");
    let err =
        SplitRing::new(&queue_at(0xfc0, 0x1800, 0x1900), two, false).expect_err("must be refused");
    assert!(matches!(
        err,
        RingError::Area {
            area: "descriptor table",
            ..
        }
    ));
    let mut q = queue_at(DESC, AVAIL, USED);
    q.set_ready(false);
    assert_eq!(
        SplitRing::new(&q, memory(), false).expect_err("must be refused"),
        RingError::NotReady
    );
}

#[test]
fn buffers_are_found_only_inside_one_region() {
    let two = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x8000),
        (GuestAddress(0x8000), 0x8000),
        (GuestAddress(0x20_000), 0x1000),
    ])
    .expect("guest memory");
    let r = SplitRing::new(&queue_at(DESC, AVAIL, USED), two.clone(), false).expect("ring");
    // Written through the ring's view, read back through vm-memory's.
    let b = r.buffer(GuestAddress(0x8ff0), 16).expect("in region 2");
    b.copy_from(&[7u8; 16]);
    let mut back = [0u8; 16];
    two.read_slice(&mut back, GuestAddress(0x8ff0))
        .expect("in guest memory");
    assert_eq!(back, [7u8; 16]);
    assert!(
        r.buffer(GuestAddress(0x20_000), 0x1000).is_some(),
        "a whole region"
    );
    assert!(
        r.buffer(GuestAddress(0x7ff0), 32).is_none(),
        "across regions"
    );
    assert!(
        r.buffer(GuestAddress(0x20_800), 0x801).is_none(),
        "past the end"
    );
    assert!(r.buffer(GuestAddress(0x10_000), 1).is_none(), "in the hole");
    assert!(
        r.buffer(GuestAddress(u64::MAX), 2).is_none(),
        "address overflow"
    );
}
