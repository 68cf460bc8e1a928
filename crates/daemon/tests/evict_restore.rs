//! Evict/restore cycles as the guest shrinker does them: DETACH (fenced),
//! the pages go away, new content lands in *different* pages, ATTACH,
//! TRANSFER. The host copy must follow byte for byte, the generation must
//! count attaches, nothing may change while detached, and the trace must
//! tell the story in order.

mod common;

use std::collections::HashSet;

use common::*;
use gpuswap_api::control::{Backing, DetachReason, EventKind};
use gpuswap_frontend::{Fence, FrontendConfig, GpuFrontend, Pages, Placement, RegionSpec};
use gpuswap_protocol::wire::{MemEntry, SetScanoutBlob};
use gpuswap_protocol::{blob_mem, format};
use gpuswap_testkit::pattern;

/// Two adjacent regions, so one entry can cross from one to the other.
const BOUNDARY: u64 = 64 << 20;

fn two_regions() -> FrontendConfig {
    FrontendConfig {
        regions: vec![
            RegionSpec::new(0, BOUNDARY),
            RegionSpec::new(BOUNDARY, 64 << 20),
        ],
        ..Default::default()
    }
}

fn crosses_boundary(e: &MemEntry) -> bool {
    e.addr < BOUNDARY && e.addr + u64::from(e.length) > BOUNDARY
}

/// Where the pages of cycle `cycle` go.
fn pages_for_cycle(
    gpu: &mut GpuFrontend,
    cycle: usize,
    n: usize,
    straddle: &mut Option<Pages>,
) -> (Pages, Vec<MemEntry>) {
    let ram = gpu.ram_mut();
    let pages = match cycle % 6 {
        0 => ram.alloc_in(0, n, Placement::Scattered).unwrap(),
        1 => ram.alloc_in(BOUNDARY, n, Placement::Scattered).unwrap(),
        2 => {
            let low = ram.alloc_in(0, n / 2, Placement::Scattered).unwrap();
            let high = ram
                .alloc_in(BOUNDARY, n - n / 2, Placement::Scattered)
                .unwrap();
            // High pages first: the entry order, not the address order,
            // is the byte order of the backing.
            Pages::from_addrs(high.addrs().iter().chain(low.addrs()).copied().collect())
        }
        3 => straddle.take().expect("straddling pages used once"),
        4 => ram.alloc(n, Placement::Scattered).unwrap(),
        _ => ram.alloc_in(BOUNDARY, n, Placement::Contiguous).unwrap(),
    };
    let entries = if cycle % 6 == 4 {
        pages.page_entries()
    } else {
        pages.entries()
    };
    (pages, entries)
}

#[test]
fn resource_2d_survives_evict_restore_cycles_in_different_pages() {
    const CYCLES: usize = 7;
    let mut d = Daemon::spawn("evict2d", &[]);
    let mut gpu = d.connect(two_regions());
    let display = gpu.display().unwrap().clone();
    let mut ctl = d.ctl();
    let (w, h) = (100u32, 60u32);
    let size = (w * h * 4) as usize;
    let n = size.div_ceil(4096);
    // Reserved now so the scattered allocations cannot take them: pages
    // straddling the region boundary, merged into one crossing entry.
    let mut straddle = Some(
        gpu.ram_mut()
            .alloc(n, Placement::At(BOUNDARY - 3 * 4096))
            .unwrap(),
    );
    let seq0 = ctl.last_seq();
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, w, h)
        .unwrap();

    let mut old: Option<Pages> = None;
    let mut used: HashSet<u64> = HashSet::new();
    let mut host = vec![0u8; size];
    let mut fence = 0u64;
    let mut saw = (false, false, false);
    for cycle in 0..CYCLES {
        if let Some(prev) = old.take() {
            // Evict: fenced detach; the host copy must not move.
            fence += 1;
            gpu.fenced(Fence::new(fence)).detach_backing(1).unwrap();
            let r = ctl.live(1);
            assert_eq!(r.backing, Backing::Detached);
            assert_eq!(
                r.host_hash,
                some_hash(&host),
                "cycle {cycle}: detach changed the host copy"
            );
            // The guest reuses the old pages for something else (kept
            // allocated, so later cycles get pages never used before).
            gpu.ram()
                .write_entries(&prev.entries(), 0, &vec![0xa5; prev.bytes() as usize])
                .unwrap();
            assert_eq!(
                ctl.live(1).host_hash,
                some_hash(&host),
                "cycle {cycle}: old pages reused"
            );
        }

        let (pages, entries) = pages_for_cycle(&mut gpu, cycle, n, &mut straddle);
        assert!(
            pages.addrs().iter().all(|a| !used.contains(a)),
            "cycle {cycle}: pages must be new"
        );
        used.extend(pages.addrs());
        saw.0 |= pages.addrs().iter().any(|&a| a < BOUNDARY)
            && pages.addrs().iter().any(|&a| a >= BOUNDARY);
        saw.1 |= entries.iter().any(crosses_boundary);
        saw.2 |= entries.len() == n && n > 1;
        let pix = pattern(size, 100 + cycle as u64);
        gpu.ram().write_entries(&entries, 0, &pix).unwrap();
        // Still detached: new guest content does not reach the host.
        assert_eq!(
            ctl.live(1).host_hash,
            some_hash(&host),
            "cycle {cycle}: before attach"
        );

        fence += 1;
        gpu.fenced(Fence::new(fence))
            .attach_backing(1, &entries)
            .unwrap();
        let r = ctl.live(1);
        assert_eq!(r.generation, cycle as u64 + 1, "one generation per attach");
        assert_eq!(r.entries, entries.len() as u64);
        assert_eq!(r.backing_hash, some_hash(&pix), "cycle {cycle}: backing");
        assert_eq!(
            r.host_hash,
            some_hash(&host),
            "cycle {cycle}: attach alone copies nothing"
        );

        gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();
        host.copy_from_slice(&pix);
        assert_eq!(
            ctl.live(1).host_hash,
            some_hash(&host),
            "cycle {cycle}: after transfer"
        );
        if cycle == 0 {
            gpu.set_scanout(0, 1, rect(0, 0, w, h)).unwrap();
        }
        let mark = display.event_count();
        gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
        let (r, data) = next_update(&display, mark);
        assert_eq!(r, rect(0, 0, w, h));
        if data != pix {
            let first = data.iter().zip(&pix).position(|(a, b)| a != b);
            panic!("cycle {cycle}: host copy differs from the guest's at byte {first:?}");
        }
        old = Some(pages);
    }
    assert!(saw.0, "a backing spanned both regions");
    assert!(saw.1, "an entry crossed the region boundary");
    assert!(saw.2, "a backing had one entry per page");

    // The trace, in order, with matching generations.
    let trace = ctl.trace(seq0, Some(1)).unwrap();
    let story: Vec<(String, u64)> = trace
        .iter()
        .filter(|e| e.name() != "scanout")
        .map(|e| (e.name().to_string(), e.generation))
        .collect();
    let mut expect = vec![("create".to_string(), 0)];
    for g in 1..=CYCLES as u64 {
        for kind in ["attach", "transfer", "flush"] {
            expect.push((kind.to_string(), g));
        }
        if g < CYCLES as u64 {
            expect.push(("detach".to_string(), g));
        }
    }
    assert_eq!(story, expect);
    assert!(events_of(&trace, "detach").iter().all(|e| matches!(
        e.kind,
        EventKind::Detach {
            reason: DetachReason::Command
        }
    )));
    assert!(trace.windows(2).all(|p| p[0].seq < p[1].seq));
    let c = ctl.counters().unwrap().counters;
    assert_eq!(c.violations, 0);
    assert_eq!(c.attaches, CYCLES as u64);
    assert_eq!(c.detaches, CYCLES as u64 - 1);
    assert_eq!(c.transfers, CYCLES as u64);
    d.assert_alive();
}

#[test]
fn guest_blob_scanout_survives_evict_restore_cycles() {
    let d = Daemon::spawn("evictblob", &[]);
    let mut gpu = d.connect(two_regions());
    let display = gpu.display().unwrap().clone();
    let mut ctl = d.ctl();
    let (w, h) = (64u32, 32u32);
    let stride = (w * 4) as usize;
    let size = stride * h as usize;
    gpu.resource_create_blob(2, blob_mem::GUEST, 0, size as u64, &[])
        .unwrap();
    let mut args = SetScanoutBlob {
        r: rect(0, 0, w, h),
        scanout_id: 0,
        resource_id: 2,
        width: w,
        height: h,
        format: format::B8G8R8X8_UNORM,
        ..Default::default()
    };
    args.strides[0] = stride as u32;
    let mut old: Option<Pages> = None;
    for cycle in 0..5u64 {
        if let Some(prev) = old.take() {
            gpu.fenced(Fence::new(cycle)).detach_backing(2).unwrap();
            assert!(ctl.live(2).backing_hash.is_none());
            gpu.ram_mut().free(&prev);
        }
        let region = if cycle % 2 == 0 { 0 } else { BOUNDARY };
        let pages = gpu
            .ram_mut()
            .alloc_in(region, size / 4096, Placement::Scattered)
            .unwrap();
        let pix = pattern(size, 200 + cycle);
        gpu.ram().write_entries(&pages.entries(), 0, &pix).unwrap();
        gpu.attach_backing(2, &pages.entries()).unwrap();
        let r = ctl.live(2);
        assert_eq!((r.generation, r.backing_hash), (cycle + 1, some_hash(&pix)));
        if cycle == 0 {
            gpu.set_scanout_blob(&args).unwrap();
        }
        let mark = display.event_count();
        gpu.resource_flush(2, rect(0, 0, w, h)).unwrap();
        let (_, data) = next_update(&display, mark);
        assert!(data == pix, "cycle {cycle}: the scanout shows stale pages");
        old = Some(pages);
    }
    // Still on the scanout through every cycle.
    assert_eq!(ctl.live(2).scanouts, [0]);
}
