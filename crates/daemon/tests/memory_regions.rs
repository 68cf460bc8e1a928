//! Memory-table changes under live backings: removing another region keeps
//! a backing working through the new mapping; removing the region under a
//! backing detaches it with a `backing_left_guest_ram` violation; a region
//! added back can be attached and used.

mod common;

use common::*;
use gpuswap_api::control::{Backing, DetachReason, EventKind, Violation};
use gpuswap_device::RESOURCE_OVERHEAD;
use gpuswap_frontend::{FrontendConfig, Placement, RegionSpec};
use gpuswap_protocol::{blob_mem, format, ErrorCode};
use gpuswap_testkit::pattern;
use vhost::vhost_user::VhostUserProtocolFeatures;

const A: u64 = 4 << 30;
const B: u64 = 8 << 30;

fn run(use_mem_slots: bool) {
    let name = if use_mem_slots {
        "mem-slots"
    } else {
        "mem-table"
    };
    let mut d = Daemon::spawn(name, &[]);
    let mut gpu = d.connect(FrontendConfig {
        regions: vec![
            RegionSpec::new(0, 64 << 20),
            RegionSpec::new(A, 16 << 20),
            RegionSpec::new(B, 16 << 20),
        ],
        use_mem_slots,
        ..Default::default()
    });
    assert_eq!(
        gpu.negotiated()
            .has_protocol(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
        use_mem_slots
    );
    let display = gpu.display().unwrap().clone();
    let mut ctl = d.ctl();
    let (w, h) = (64u32, 32u32);
    let size = (w * h * 4) as usize;
    let full = rect(0, 0, w, h);

    // Resource 1 backed in region A, blob 2 in region B.
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, w, h)
        .unwrap();
    let pages = gpu
        .ram_mut()
        .alloc_in(A, size / 4096, Placement::Scattered)
        .unwrap();
    let entries = pages.entries();
    let p1 = pattern(size, 1);
    gpu.ram().write_entries(&entries, 0, &p1).unwrap();
    gpu.attach_backing(1, &entries).unwrap();
    gpu.transfer_to_host_2d(1, full, 0).unwrap();
    gpu.set_scanout(0, 1, full).unwrap();
    let blob_pages = gpu.ram_mut().alloc_in(B, 2, Placement::Scattered).unwrap();
    gpu.resource_create_blob(2, blob_mem::GUEST, 0, 8192, &blob_pages.entries())
        .unwrap();
    let v0 = ctl.counters().unwrap().counters.violations;
    let seq0 = ctl.last_seq();

    // Remove B: only the blob loses its backing.
    gpu.remove_region(B).unwrap();
    let blob = ctl.live(2);
    assert_eq!((blob.backing, blob.generation), (Backing::Detached, 1));
    let r = ctl.live(1);
    assert_eq!((r.backing, r.generation), (Backing::Attached, 1));
    assert_eq!(r.backing_hash, some_hash(&p1));
    // The backing reads the pages through the new table.
    let p2 = pattern(size, 2);
    gpu.ram().write_entries(&entries, 0, &p2).unwrap();
    assert_eq!(ctl.live(1).backing_hash, some_hash(&p2));
    gpu.transfer_to_host_2d(1, full, 0).unwrap();
    assert_eq!(ctl.live(1).host_hash, some_hash(&p2));
    let mark = display.event_count();
    gpu.resource_flush(1, full).unwrap();
    assert!(
        next_update(&display, mark).1 == p2,
        "flush after removing another region"
    );

    // Remove A: resource 1's backing left guest RAM.
    gpu.remove_region(A).unwrap();
    let r = ctl.live(1);
    assert_eq!((r.backing, r.generation), (Backing::Detached, 1));
    assert_eq!(r.host_hash, some_hash(&p2), "the host copy survives");
    assert!(r.backing_hash.is_none());
    assert_eq!(
        gpu.transfer_to_host_2d(1, full, 0)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::Unspec)
    );
    // The old entries are no longer guest RAM.
    assert_eq!(
        gpu.attach_backing(1, &entries).unwrap_err().device_error(),
        Some(ErrorCode::InvalidParameter)
    );

    let events = ctl.trace(seq0, None).unwrap();
    let story: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Detach { .. } | EventKind::Violation { .. }
            )
        })
        .map(|e| (e.resource_id, e.kind.clone()))
        .collect();
    let detach = |id: u32| {
        let reason = DetachReason::MemoryRemoved;
        (id, EventKind::Detach { reason })
    };
    let violation = |id: u32, violation: Violation, command: &str| {
        let command = command.to_string();
        (id, EventKind::Violation { violation, command })
    };
    assert_eq!(
        story,
        vec![
            detach(2),
            violation(2, Violation::BackingLeftGuestRam, "set_mem_table"),
            detach(1),
            violation(1, Violation::BackingLeftGuestRam, "set_mem_table"),
            violation(1, Violation::UseWhileDetached, "transfer_to_host_2d"),
        ]
    );
    let c = ctl.counters().unwrap();
    assert_eq!(c.counters.violations - v0, 3);
    assert_eq!(c.host_memory_used, size as u64 + 2 * RESOURCE_OVERHEAD);

    // Add a region back at A (fresh memory), attach there, it works.
    gpu.add_region(RegionSpec::new(A, 16 << 20)).unwrap();
    let pages = gpu
        .ram_mut()
        .alloc_in(A, size / 4096, Placement::Scattered)
        .unwrap();
    let p3 = pattern(size, 3);
    gpu.ram().write_entries(&pages.entries(), 0, &p3).unwrap();
    gpu.attach_backing(1, &pages.entries()).unwrap();
    assert_eq!(ctl.live(1).generation, 2);
    gpu.transfer_to_host_2d(1, full, 0).unwrap();
    let mark = display.event_count();
    gpu.resource_flush(1, full).unwrap();
    assert!(
        next_update(&display, mark).1 == p3,
        "flush after re-adding the region"
    );
    assert_eq!(ctl.live(1).host_hash, some_hash(&p3));
    // The blob comes back too, in the low region.
    let low = gpu.ram_mut().alloc_in(0, 2, Placement::Scattered).unwrap();
    gpu.attach_backing(2, &low.entries()).unwrap();
    assert_eq!(ctl.live(2).generation, 2);
    d.assert_alive();
}

#[test]
fn memory_regions_come_and_go_with_mem_slots() {
    run(true);
}

#[test]
fn memory_regions_come_and_go_with_set_mem_table() {
    run(false);
}
