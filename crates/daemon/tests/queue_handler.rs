//! The queue handler in-process, on rings a hostile guest wrote: each test
//! is an input the `queue` fuzz target found (crates/fuzz), decoded into
//! the ring writes it made.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use gpuswap_daemon::backend::{GuestMemory, VhostUserGpuBackend, CURSOR_QUEUE};
use gpuswap_device::DeviceConfig;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

const MIB: u64 = 1 << 20;
/// Ring addresses of queue 0 and 1 (as the fuzz target lays them out).
const RING_BASE: [u64; 2] = [MIB, MIB + 0x4_0000];
const AVAIL_OFFSET: u64 = 0x1_0000;
const USED_OFFSET: u64 = 0x2_0000;

/// A backend with both queues of `size` entries set up on 8 MiB of guest
/// RAM (two regions with a hole), as a frontend would.
fn queues(
    size: u16,
    event_idx: bool,
) -> (
    VhostUserGpuBackend,
    GuestMemoryAtomic<GuestMemory>,
    Vec<VringRwLock>,
) {
    let backend = VhostUserGpuBackend::new(DeviceConfig::default()).expect("backend");
    let ranges = [(GuestAddress(0), 4 << 20), (GuestAddress(6 * MIB), 4 << 20)];
    let mem = GuestMemoryAtomic::new(GuestMemory::from_ranges(&ranges).expect("guest RAM"));
    let vrings: Vec<VringRwLock> = RING_BASE
        .iter()
        .map(|&base| {
            let vring = VringRwLock::new(mem.clone(), 1024).expect("vring");
            vring.set_queue_size(size);
            vring
                .set_queue_info(base, base + AVAIL_OFFSET, base + USED_OFFSET)
                .expect("ring addresses");
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vring
        })
        .collect();
    backend.set_event_idx(event_idx);
    backend.update_memory(mem.clone()).expect("memory table");
    (backend, mem, vrings)
}

/// Found by the `queue` target: with EVENT_IDX negotiated, an avail index
/// moved more than a queue's worth ahead (here 50588 on a 128-entry ring,
/// no chain behind it) made the handler spin forever: the queue refused
/// to pop a chain, and re-enabling notifications kept reporting chains
/// pending. The handler must return, complete nothing, and count the ring
/// as one it cannot trust (which drops the connection: see bad_input.rs).
#[test]
fn avail_index_far_ahead_with_event_idx_does_not_hang_the_handler() {
    let (backend, mem, vrings) = queues(128, true);
    let q = usize::from(CURSOR_QUEUE);
    mem.memory()
        .write_obj(50588u16, GuestAddress(RING_BASE[q] + AVAIL_OFFSET + 2))
        .expect("avail idx in guest RAM");
    let control = backend.control_handle();
    let (done, finished) = mpsc::channel();
    let handler = thread::spawn(move || {
        let result = backend.handle_event(CURSOR_QUEUE, EventSet::IN, &vrings, 0);
        let next_used = vrings[q].get_ref().get_queue().next_used();
        let _ = done.send((result.is_err(), next_used));
    });
    let (failed, next_used) = finished
        .recv_timeout(Duration::from_secs(20))
        .expect("handle_event still running after 20 s: it spins on the corrupt ring");
    handler.join().expect("handler thread");
    assert!(
        !failed,
        "a broken ring is the connection's end, not a worker error"
    );
    assert_eq!(next_used, 0, "nothing was completed");
    assert_eq!(control.ring_errors(), 1);
}
