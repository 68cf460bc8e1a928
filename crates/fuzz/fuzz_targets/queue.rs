//! Whole descriptor chains through the daemon's queue handler.
//!
//! Sets both queues of a `VhostUserGpuBackend` up as a vhost-user frontend
//! would (size, ring addresses, ready, memory table), then lets the input
//! write the descriptor tables, avail rings and buffers into guest memory
//! and kick the queues: chains with indirect tables, loops, odd lengths
//! and addresses outside guest RAM, avail indices that jump and heads out
//! of range. Allowed: `Err` from `handle_event` (a corrupt ring may be
//! refused). Checked: no panic, no hang (libFuzzer's -timeout), bounded
//! memory (-rss_limit_mb / -malloc_limit_mb), a kick consumes at most a
//! queue's worth of chains and completes at most those it consumed, and
//! the device's own consistency check after every event.

#![no_main]

use arbitrary::Arbitrary;
use gpuswap_daemon::backend::{VhostUserGpuBackend, CONTROL_QUEUE, CURSOR_QUEUE};
use gpuswap_device::DeviceConfig;
use gpuswap_fuzz::{guest_memory_mmap, Mem, MIB};
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

/// Where each queue's rings live (every layout has guest RAM there).
const RING_BASE: [u64; 2] = [MIB, MIB + 0x4_0000];
const DESC_OFFSET: u64 = 0;
const AVAIL_OFFSET: u64 = 0x1_0000;
const USED_OFFSET: u64 = 0x2_0000;
/// Buffers: 64 KiB slots from here up to 2 MiB.
const SLOT_BASE: u64 = 0x18_0000;
const SLOT_SIZE: u64 = 0x1_0000;
const SLOTS: u64 = 8;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// Into buffer slot `n`, `offset` bytes in.
    Slot {
        n: u8,
        offset: u16,
    },
    /// Into the queue's own descriptor table (for indirect tables).
    DescTable {
        offset: u16,
    },
    /// The hole between the two regions, or past the end.
    Hole(u16),
    Raw(u64),
}

impl Addr {
    fn get(self, queue: usize) -> u64 {
        match self {
            Addr::Slot { n, offset } => {
                SLOT_BASE + u64::from(n) % SLOTS * SLOT_SIZE + u64::from(offset)
            }
            Addr::DescTable { offset } => RING_BASE[queue] + DESC_OFFSET + u64::from(offset),
            Addr::Hole(n) => 4 * MIB + u64::from(n) * 64,
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Desc {
    addr: Addr,
    len: u32,
    /// NEXT (1), WRITE (2), INDIRECT (4); other bits as given.
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// Write descriptor `index` of a queue's table.
    Descriptor {
        queue: bool,
        index: u16,
        desc: Desc,
    },
    /// Write bytes at an address (requests, indirect tables).
    Write {
        addr: Addr,
        queue: bool,
        bytes: Vec<u8>,
    },
    /// Publish heads on a queue's avail ring; `jump` moves the avail index
    /// on by that much more than the heads written.
    Publish {
        queue: bool,
        heads: Vec<u16>,
        jump: u16,
    },
    Kick(bool),
    /// A new memory table (one of the fixed layouts).
    SetMemory(u8),
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// log2 of the queue sizes (mod 11: 1..=1024), or a raw size.
    sizes: [u8; 2],
    event_idx: bool,
    events: Vec<Event>,
}

/// A split ring's avail/used layout: flags, idx, ring[size].
fn avail_idx_addr(queue: usize) -> GuestAddress {
    GuestAddress(RING_BASE[queue] + AVAIL_OFFSET + 2)
}

/// The queue's own positions: (next avail, next used).
fn positions(vring: &VringRwLock) -> (u16, u16) {
    let state = vring.get_ref();
    (
        state.get_queue().next_avail(),
        state.get_queue().next_used(),
    )
}

fn queue_size(selector: u8) -> u16 {
    if selector & 0x80 != 0 {
        // Not a power of two, or zero: the queue must refuse to run.
        u16::from(selector & 0x7f) * 3
    } else {
        1 << (selector % 11)
    }
}

fuzz_target!(|input: Input| {
    let config = DeviceConfig {
        max_host_memory: 64 * MIB,
        trace_capacity: 256,
        ..DeviceConfig::default()
    };
    let backend = VhostUserGpuBackend::new(config).expect("backend");
    let atomic: GuestMemoryAtomic<Mem> = GuestMemoryAtomic::new(guest_memory_mmap(0));
    let vrings: Vec<VringRwLock> = (0..2)
        .map(|_| VringRwLock::new(atomic.clone(), 1024).expect("vring"))
        .collect();
    let mut sizes = [0u16; 2];
    for (q, vring) in vrings.iter().enumerate() {
        vring.set_queue_size(queue_size(input.sizes[q]));
        // An invalid size is refused and the queue keeps its own.
        sizes[q] = vring.get_ref().get_queue().size();
        let base = RING_BASE[q];
        vring
            .set_queue_info(base + DESC_OFFSET, base + AVAIL_OFFSET, base + USED_OFFSET)
            .expect("aligned ring addresses");
        vring.set_queue_event_idx(input.event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
    }
    backend.set_event_idx(input.event_idx);
    backend.update_memory(atomic.clone()).expect("memory table");

    // The avail index each queue's ring has been given so far.
    let mut avail = [0u16; 2];
    for event in &input.events {
        let mem = atomic.memory();
        match *event {
            Event::Descriptor { queue, index, desc } => {
                let q = usize::from(queue);
                let at = RING_BASE[q] + DESC_OFFSET + u64::from(index % 1024) * 16;
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&desc.addr.get(q).to_le_bytes());
                raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
                raw[12..14].copy_from_slice(&desc.flags.to_le_bytes());
                raw[14..].copy_from_slice(&desc.next.to_le_bytes());
                let _ = mem.write_slice(&raw, GuestAddress(at));
            }
            Event::Write {
                addr,
                queue,
                ref bytes,
            } => {
                // Partly outside guest RAM is fine: what fits is written.
                let _ = mem.write(bytes, GuestAddress(addr.get(usize::from(queue))));
            }
            Event::Publish {
                queue,
                ref heads,
                jump,
            } => {
                let q = usize::from(queue);
                let ring = RING_BASE[q] + AVAIL_OFFSET + 4;
                for &head in heads {
                    let slot = u64::from(avail[q] % sizes[q].max(1));
                    let _ = mem.write_obj(head, GuestAddress(ring + slot * 2));
                    avail[q] = avail[q].wrapping_add(1);
                }
                avail[q] = avail[q].wrapping_add(jump);
                let _ = mem.write_obj(avail[q], avail_idx_addr(q));
            }
            Event::Kick(cursor) => {
                let queue = if cursor { CURSOR_QUEUE } else { CONTROL_QUEUE };
                let q = usize::from(queue);
                let (avail_before, used_before) = positions(&vrings[q]);
                // An error (a ring the handler refuses) is allowed; a
                // panic or a hang is not.
                let _ = backend.handle_event(queue, EventSet::IN, &vrings, 0);
                let (avail_after, used_after) = positions(&vrings[q]);
                let consumed = avail_after.wrapping_sub(avail_before);
                let completed = used_after.wrapping_sub(used_before);
                assert!(
                    consumed <= sizes[q] && completed <= consumed,
                    "queue {queue} of size {}: {consumed} chains consumed, {completed} completed",
                    sizes[q]
                );
            }
            Event::SetMemory(layout) => {
                atomic
                    .lock()
                    .expect("memory lock")
                    .replace(guest_memory_mmap(usize::from(layout)));
                backend.update_memory(atomic.clone()).expect("memory table");
            }
            Event::Reset => backend.reset_device(),
        }
        let device = backend.device();
        assert!(device.host_memory_used() <= device.config().max_host_memory);
        if let Err(e) = device.check_consistency() {
            panic!("after {event:?}: {e}");
        }
    }
});
