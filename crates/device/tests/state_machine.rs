//! The backing state machine and the rules around it, one test per rule,
//! driven through wire bytes that the protocol crate decodes.

mod common;

use common::*;
use gpuswap_device::trace::{DetachReason, EventKind, InjectedFault, Violation};
use gpuswap_device::{DeviceConfig, Rect2d, ResourceKind};
use gpuswap_protocol::ctrl_type as t;
use gpuswap_protocol::wire::{
    CtrlHeader, CursorPos, GetCapset, GetCapsetInfo, GetEdid, ResourceMapBlob, UpdateCursor,
};
use gpuswap_protocol::{blob_mem, DecodeError, ErrorCode, Response};
use gpuswap_testkit::{model, pattern};
use vm_memory::{ByteValued, Bytes, GuestAddress};

const UNSPEC: Response = Response::Err(ErrorCode::Unspec);
const INVALID_PARAMETER: Response = Response::Err(ErrorCode::InvalidParameter);
const INVALID_RESOURCE: Response = Response::Err(ErrorCode::InvalidResourceId);
const OUT_OF_MEMORY: Response = Response::Err(ErrorCode::OutOfMemory);

const ATTACH: &str = "resource_attach_backing";
const DETACH: &str = "resource_detach_backing";

/// Page-sized entries at the given page numbers, in that order.
fn pages(numbers: &[u64]) -> Vec<(u64, u32)> {
    numbers.iter().map(|&n| (n * PAGE, PAGE as u32)).collect()
}

/// A 2D XRGB resource `id` of `w` x `h`, attached to `extents` holding
/// `content`, transferred in full.
fn uploaded_2d(b: &mut Bench, id: u32, (w, h): (u32, u32), extents: &[(u64, u32)], content: &[u8]) {
    b.ok(&create_2d(id, XRGB, w, h));
    b.scatter(extents, content);
    b.ok(&attach(id, extents));
    b.ok(&transfer(id, rect(0, 0, w, h), 0));
}

fn rect2d(x: u32, y: u32, width: u32, height: u32) -> Rect2d {
    Rect2d {
        x,
        y,
        width,
        height,
    }
}

fn cursor(type_: u32, scanout_id: u32, x: u32, y: u32, id: u32, hot: (u32, u32)) -> Vec<u8> {
    let body = UpdateCursor {
        pos: CursorPos {
            scanout_id,
            x,
            y,
            padding: 0,
        },
        resource_id: id,
        hot_x: hot.0,
        hot_y: hot.1,
        padding: 0,
    };
    request(type_, body.as_slice())
}

/// What a display is sent of `r` of an image (see `model::crop`).
fn crop(image: &[u8], base: usize, stride: usize, r: Rect2d) -> Vec<u8> {
    model::crop(image, base, stride, rect(r.x, r.y, r.width, r.height))
}

// ---- Attach and transfer -------------------------------------------------

#[test]
fn transfer_after_attaching_scattered_pages_makes_host_copy_equal_the_guest_pattern() {
    let mut b = Bench::simple();
    let (w, h) = (64, 48); // 3 pages
    let size = (w * h * 4) as usize;
    let extents = pages(&[7, 2, 17]);
    let content = pattern(size, 1);
    let zero = hash(&vec![0; size]);
    b.ok(&create_2d(1, XRGB, w, h));
    b.ok(&attach(1, &extents));
    assert_eq!(b.info(1).backing_hash, Some(zero.clone()));

    // The guest writes after attaching: the backing is read live, and
    // nothing reaches the host copy before the transfer.
    b.scatter(&extents, &content);
    let info = b.info(1);
    assert_eq!(info.host_hash, Some(zero));
    assert_eq!(info.backing_hash, Some(hash(&content)));

    b.ok(&transfer(1, rect(0, 0, w, h), 0));
    let info = b.info(1);
    assert_eq!(info.host_hash, Some(hash(&content)));
    assert_eq!(info.backing_hash, info.host_hash);
    assert_eq!(info.generation, 1);
    assert_eq!(info.backing.as_str(), "attached");
    assert_eq!((info.entries, info.backing_bytes), (3, size as u64));
    let kinds: Vec<EventKind> = b.events().into_iter().map(|e| e.kind).collect();
    assert!(matches!(
        kinds[0],
        EventKind::Create {
            kind: ResourceKind::TwoD { .. },
            ..
        }
    ));
    assert_eq!(
        kinds[1],
        EventKind::Attach {
            entries: 3,
            bytes: size as u64
        }
    );
    assert!(matches!(kinds[2], EventKind::Transfer { offset: 0, .. }));
    assert_eq!(kinds.len(), 3);
}

#[test]
fn evict_restore_cycles_keep_the_host_copy_byte_exact() {
    let mut b = Bench::simple();
    let (w, h) = (32, 64); // 2 pages
    let full = rect(0, 0, w, h);
    let size = (w * h * 4) as usize;
    let mut extents = pages(&[3, 1]);
    let mut content = pattern(size, 100);
    uploaded_2d(&mut b, 1, (w, h), &extents, &content);
    b.ok(&set_scanout(0, 1, full));
    b.display.take();
    b.events();

    for cycle in 1..=4u64 {
        b.ok(&detach(1));
        let events = b.events();
        assert_eq!(detaches_of(&events), vec![(1, DetachReason::Command)]);
        assert_eq!(events[0].generation, cycle);
        // The guest reuses the evicted pages: the host copy must not care.
        b.scatter(&extents, &pattern(size, 999 + cycle));
        assert_eq!(b.send(&transfer(1, full, 0)), UNSPEC);
        assert_eq!(
            b.violations(),
            vec![(1, Violation::UseWhileDetached, "transfer_to_host_2d")]
        );
        assert_eq!(b.info(1).host_hash, Some(hash(&content)));

        // Restore into different pages with new content.
        extents = pages(&[16 * cycle + 5, 16 * cycle + 2]);
        let next = pattern(size, 100 + cycle);
        b.scatter(&extents, &next);
        assert_eq!(b.info(1).host_hash, Some(hash(&content)));
        b.ok(&attach(1, &extents));
        assert_eq!(b.info(1).generation, cycle + 1);
        assert_eq!(b.info(1).host_hash, Some(hash(&content)));
        content = next;

        b.ok(&transfer(1, full, 0));
        b.ok(&flush(1, full));
        let shown = b.display.take();
        assert_eq!(
            shown,
            vec![Shown::Update {
                scanout: 0,
                rect: rect2d(0, 0, w, h),
                pixels: content.clone(),
            }],
            "cycle {cycle}"
        );
        assert_eq!(b.info(1).host_hash, Some(hash(&content)));
        assert!(b.violations().is_empty());
    }
}

#[test]
fn flushing_part_of_a_2d_scanout_sends_just_that_part() {
    let mut b = Bench::simple();
    let (w, h) = (64u32, 32u32);
    let stride = (w * 4) as usize;
    let content = pattern(stride * h as usize, 9);
    uploaded_2d(&mut b, 1, (w, h), &pages(&[2, 4]), &content);
    // The scanout shows the 32x16 part of the resource at (16, 8).
    b.ok(&set_scanout(0, 1, rect(16, 8, 32, 16)));
    b.display.take();

    // Damage inside the shown part, not at its corner.
    b.ok(&flush(1, rect(20, 10, 8, 4)));
    assert_eq!(
        b.display.take(),
        vec![Shown::Update {
            scanout: 0,
            rect: rect2d(4, 2, 8, 4),
            pixels: crop(&content, 0, stride, rect2d(20, 10, 8, 4)),
        }]
    );
    // Damage overlapping the shown part's corner is clipped to it.
    b.ok(&flush(1, rect(0, 0, 24, 12)));
    assert_eq!(
        b.display.take(),
        vec![Shown::Update {
            scanout: 0,
            rect: rect2d(0, 0, 8, 4),
            pixels: crop(&content, 0, stride, rect2d(16, 8, 8, 4)),
        }]
    );
}

// ---- Protocol errors: change nothing, record a violation ------------------

#[test]
fn double_attach_is_unspec_and_changes_nothing() {
    let mut b = Bench::simple();
    let first = pages(&[4]);
    let content = pattern(4096, 2);
    uploaded_2d(&mut b, 1, (32, 32), &first, &content);
    let before = b.info(1);
    let used = b.dev.host_memory_used();
    b.events();

    let second = pages(&[9]);
    b.scatter(&second, &pattern(4096, 3));
    assert_eq!(b.send(&attach(1, &second)), UNSPEC);
    assert_eq!(b.violations(), vec![(1, Violation::DoubleAttach, ATTACH)]);
    let after = b.info(1);
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.backing_hash, before.backing_hash);
    assert_eq!(after.host_hash, before.host_hash);
    assert_eq!(after.entries, 1);
    assert_eq!(b.dev.host_memory_used(), used);
    // The refused pages were not claimed: another resource may take them.
    b.ok(&create_2d(2, XRGB, 32, 32));
    b.ok(&attach(2, &second));
    assert!(b.violations().is_empty());
    // And the first backing is still the one transfers read.
    b.ok(&transfer(1, rect(0, 0, 32, 32), 0));
    assert_eq!(b.info(1).host_hash, Some(hash(&content)));
}

#[test]
fn detach_while_detached_is_unspec_and_recorded_as_double_detach() {
    let mut b = Bench::simple();
    b.ok(&create_2d(1, XRGB, 16, 16));
    b.events();
    assert_eq!(b.send(&detach(1)), UNSPEC);
    assert_eq!(b.violations(), vec![(1, Violation::DoubleDetach, DETACH)]);

    b.ok(&attach(1, &pages(&[1])));
    b.ok(&detach(1));
    b.events();
    assert_eq!(b.send(&detach(1)), UNSPEC);
    let events = b.events();
    assert_eq!(
        violations_of(&events),
        vec![(1, Violation::DoubleDetach, DETACH)]
    );
    assert!(detaches_of(&events).is_empty());
    let info = b.info(1);
    assert_eq!((info.backing.as_str(), info.generation), ("detached", 1));
}

#[test]
fn use_of_a_detached_resource_is_refused_and_leaves_the_host_copy_untouched() {
    let mut b = Bench::simple();
    let (w, h) = (32, 32);
    let full = rect(0, 0, w, h);
    let extents = pages(&[5]);
    let content = pattern(4096, 4);
    uploaded_2d(&mut b, 1, (w, h), &extents, &content);
    b.ok(&set_scanout(0, 1, full));
    b.ok(&detach(1));
    b.scatter(&extents, &pattern(4096, 5));
    b.events();
    b.display.take();

    assert_eq!(b.send(&transfer(1, full, 0)), UNSPEC);
    assert_eq!(b.send(&flush(1, full)), UNSPEC);
    assert_eq!(b.send(&set_scanout(0, 1, full)), UNSPEC);
    let want = |command| (1, Violation::UseWhileDetached, command);
    assert_eq!(
        b.violations(),
        vec![
            want("transfer_to_host_2d"),
            want("resource_flush"),
            want("set_scanout")
        ]
    );
    assert!(b.display.take().is_empty(), "nothing reaches the display");
    assert_eq!(b.info(1).host_hash, Some(hash(&content)));
    assert_eq!(b.dev.counters().transfers, 1);
}

#[test]
fn unref_of_an_attached_resource_detaches_implicitly_then_forgets_the_id() {
    let mut b = Bench::simple();
    let extents = pages(&[2, 3]);
    uploaded_2d(&mut b, 1, (32, 64), &extents, &pattern(8192, 6));
    b.ok(&set_scanout(0, 1, rect(0, 0, 32, 64)));
    assert!(b.dev.host_memory_used() > 0);
    b.events();
    b.display.take();

    b.ok(&unref(1));
    let kinds: Vec<(u32, u64, EventKind)> = b
        .events()
        .into_iter()
        .map(|e| (e.resource_id, e.generation, e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                1,
                1,
                EventKind::Detach {
                    reason: DetachReason::Unref
                }
            ),
            (
                1,
                1,
                EventKind::Scanout {
                    scanout_id: 0,
                    enabled: false
                }
            ),
            (1, 1, EventKind::Unref),
        ]
    );
    assert_eq!(
        b.display.take(),
        vec![Shown::Scanout {
            scanout: 0,
            width: 0,
            height: 0
        }]
    );
    assert_eq!(b.dev.host_memory_used(), 0);
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.counters().implicit_detaches, 1);

    // Every later reference to the id is an unknown resource.
    let full = rect(0, 0, 32, 64);
    let uses: [(Vec<u8>, &str); 6] = [
        (attach(1, &extents), ATTACH),
        (detach(1), DETACH),
        (transfer(1, full, 0), "transfer_to_host_2d"),
        (flush(1, full), "resource_flush"),
        (set_scanout(0, 1, full), "set_scanout"),
        (unref(1), "resource_unref"),
    ];
    for (bytes, command) in uses {
        assert_eq!(b.send(&bytes), INVALID_RESOURCE, "{command}");
        assert_eq!(
            b.violations(),
            vec![(1, Violation::UnknownResource, command)]
        );
    }
    // The pages went with it: a new resource may use them.
    b.ok(&create_2d(2, XRGB, 32, 64));
    b.ok(&attach(2, &extents));
    assert!(b.violations().is_empty());
}

// ---- Guest blobs ------------------------------------------------------------

#[test]
fn blob_created_without_entries_starts_detached_and_attaches_later() {
    let mut b = Bench::simple();
    b.ok(&create_blob(1, blob_mem::GUEST, 8192, &[]));
    let info = b.info(1);
    assert_eq!(
        (
            info.kind.as_str(),
            info.size,
            info.backing.as_str(),
            info.generation
        ),
        ("blob", 8192, "detached", 0)
    );
    assert_eq!(info.host_hash, None);
    assert_eq!(b.send(&flush(1, rect(0, 0, 1, 1))), UNSPEC);
    assert_eq!(
        b.violations(),
        vec![(1, Violation::UseWhileDetached, "resource_flush")]
    );

    for generation in 1..=3u64 {
        let extents = pages(&[10 * generation, 10 * generation - 4]);
        let content = pattern(8192, generation);
        b.scatter(&extents, &content);
        b.ok(&attach(1, &extents));
        let info = b.info(1);
        assert_eq!(
            (info.backing.as_str(), info.generation),
            ("attached", generation)
        );
        assert_eq!(info.backing_hash, Some(hash(&content)));
        b.ok(&detach(1));
    }
    assert!(b.violations().is_empty());

    // With entries it starts attached, at generation 1.
    let extents = pages(&[40, 41]);
    b.ok(&create_blob(2, blob_mem::GUEST, 8192, &extents));
    let info = b.info(2);
    assert_eq!((info.backing.as_str(), info.generation), ("attached", 1));
}

#[test]
fn blob_backing_shorter_than_its_size_is_refused() {
    let mut b = Bench::simple();
    let short = [(PAGE, 4096), (3 * PAGE, 4095)];
    assert_eq!(
        b.send(&create_blob(1, blob_mem::GUEST, 8192, &short)),
        INVALID_PARAMETER
    );
    assert!(
        b.dev.resource_ids().is_empty(),
        "a refused blob is not created"
    );
    assert_eq!(b.dev.host_memory_used(), 0);

    b.ok(&create_blob(1, blob_mem::GUEST, 8192, &[]));
    assert_eq!(b.send(&attach(1, &short)), INVALID_PARAMETER);
    let info = b.info(1);
    assert_eq!((info.backing.as_str(), info.generation), ("detached", 0));
    b.ok(&attach(1, &[(PAGE, 4096), (3 * PAGE, 4096)]));
    assert_eq!(b.info(1).generation, 1);
    assert!(b.violations().is_empty());
}

#[test]
fn host_memory_blobs_are_refused() {
    let mut b = Bench::simple();
    for mem in [blob_mem::HOST3D, blob_mem::HOST3D_GUEST, 0, 7] {
        assert_eq!(
            b.send(&create_blob(1, mem, 4096, &[])),
            INVALID_PARAMETER,
            "blob_mem {mem}"
        );
    }
    // A guest blob in a 3D context is refused too: there are no contexts.
    let in_context = CtrlHeader {
        ctx_id: 3,
        ..Default::default()
    };
    let body = &create_blob(1, blob_mem::GUEST, 4096, &[])[24..];
    let bytes = with_header(in_context, t::RESOURCE_CREATE_BLOB, body);
    assert_eq!(b.send(&bytes), Response::Err(ErrorCode::InvalidContextId));
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.host_memory_used(), 0);
}

#[test]
fn set_scanout_blob_checks_scanout_format_and_bounds() {
    let mut b = Bench::simple();
    let size = 16384u32;
    b.ok(&create_blob(
        1,
        blob_mem::GUEST,
        u64::from(size),
        &pages(&[1, 2, 3, 4]),
    ));
    b.ok(&create_2d(2, XRGB, 16, 16));
    b.ok(&attach(2, &pages(&[8])));
    b.ok(&create_blob(3, blob_mem::GUEST, 4096, &[]));
    b.events();
    let full = rect(0, 0, 16, 16);
    let blob = |id, r, stride, offset| set_scanout_blob(0, id, r, (16, 16), stride, offset);

    // The last row ends exactly at the end of the blob: fits.
    let last_fit = size - (15 * 128 + 64);
    b.ok(&blob(1, full, 128, last_fit));
    assert_eq!(b.info(1).scanouts, vec![0]);
    b.ok(&blob(0, full, 128, 0));
    assert!(b.info(1).scanouts.is_empty(), "resource 0 disables");

    let invalid = [
        ("stride shorter than a row", blob(1, full, 60, 0)),
        ("one byte past the end", blob(1, full, 128, last_fit + 1)),
        ("offset past the end", blob(1, full, 128, size)),
        ("overflowing layout", blob(1, full, u32::MAX, u32::MAX)),
        (
            "rect wider than the image",
            blob(1, rect(1, 0, 16, 16), 128, 0),
        ),
        (
            "rect overflowing u32",
            blob(1, rect(u32::MAX, 0, 2, 1), 128, 0),
        ),
        ("a 2D resource", blob(2, full, 128, 0)),
    ];
    for (what, bytes) in invalid {
        assert_eq!(b.send(&bytes), INVALID_PARAMETER, "{what}");
    }
    let mut bad_format = blob(1, full, 128, 0);
    let format_at = 24 + 16 + 16; // header, rect, scanout/resource/width/height
    bad_format[format_at..format_at + 4].copy_from_slice(&999u32.to_le_bytes());
    assert_eq!(b.send(&bad_format), INVALID_PARAMETER);
    assert_eq!(
        b.send(&set_scanout_blob(1, 1, full, (16, 16), 128, 0)),
        Response::Err(ErrorCode::InvalidScanoutId)
    );
    assert!(b.violations().is_empty());

    assert_eq!(b.send(&blob(3, full, 128, 0)), UNSPEC);
    assert_eq!(b.send(&blob(9, full, 128, 0)), INVALID_RESOURCE);
    assert_eq!(
        b.violations(),
        vec![
            (3, Violation::UseWhileDetached, "set_scanout_blob"),
            (9, Violation::UnknownResource, "set_scanout_blob"),
        ]
    );
    assert!(b.info(1).scanouts.is_empty());
}

#[test]
fn flushing_a_blob_scanout_sends_the_pixels_at_its_stride_and_offset() {
    let mut b = Bench::simple();
    let size = 12288usize;
    let extents = pages(&[9, 4, 6]);
    let content = pattern(size, 7);
    b.scatter(&extents, &content);
    b.ok(&create_blob(1, blob_mem::GUEST, size as u64, &extents));

    // A 64x25 image at byte 300 with rows 400 bytes apart (256 used),
    // showing the 40x15 part at (4, 3).
    let (stride, offset) = (400usize, 300usize);
    b.display.take();
    b.ok(&set_scanout_blob(
        0,
        1,
        rect(4, 3, 40, 15),
        (64, 25),
        stride as u32,
        offset as u32,
    ));
    assert_eq!(
        b.display.take(),
        vec![Shown::Scanout {
            scanout: 0,
            width: 40,
            height: 15
        }]
    );

    // A flush of a part that overlaps the shown rect sends the overlap.
    b.ok(&flush(1, rect(0, 0, 20, 10)));
    let overlap = rect2d(4, 3, 16, 7);
    assert_eq!(
        b.display.take(),
        vec![Shown::Update {
            scanout: 0,
            rect: rect2d(0, 0, 16, 7),
            pixels: crop(&content, offset, stride, overlap),
        }]
    );
    // A flush outside the shown rect sends nothing.
    b.ok(&flush(1, rect(50, 20, 10, 5)));
    assert!(b.display.take().is_empty());

    // After an evict/restore into other pages the flush reads those.
    b.ok(&detach(1));
    let moved = pages(&[30, 20, 25]);
    let next = pattern(size, 8);
    b.scatter(&moved, &next);
    b.ok(&attach(1, &moved));
    b.ok(&flush(1, rect(0, 0, 64, 25)));
    assert_eq!(
        b.display.take(),
        vec![Shown::Update {
            scanout: 0,
            rect: rect2d(0, 0, 40, 15),
            pixels: crop(&next, offset, stride, rect2d(4, 3, 40, 15)),
        }]
    );
}

// ---- Overlapping backings ---------------------------------------------------

#[test]
fn overlapping_backings_of_two_live_resources_are_recorded() {
    let mut b = Bench::simple();
    b.ok(&create_2d(1, XRGB, 32, 64));
    b.ok(&create_blob(2, blob_mem::GUEST, 8192, &[]));
    let a = pages(&[10, 11]);
    // Shares half of page 11 with `a`.
    let overlapping = [(11 * PAGE + 2048, 4096), (20 * PAGE, 4096)];
    b.ok(&attach(1, &a));
    b.events();

    // Not refused (the guest bug is recorded, the device goes on).
    b.ok(&attach(2, &overlapping));
    assert_eq!(
        b.violations(),
        vec![(2, Violation::OverlappingBacking { other: 1 }, ATTACH)]
    );
    assert_eq!(b.info(2).generation, 1);

    // Once the first has let go of the pages, there is nothing to report.
    b.ok(&detach(1));
    b.ok(&detach(2));
    b.ok(&attach(2, &overlapping));
    b.ok(&attach(1, &pages(&[14, 15])));
    assert!(b.violations().is_empty());
}

#[test]
fn overlap_is_still_recorded_after_the_first_owner_detaches() {
    let mut b = Bench::simple();
    for id in 1..=3 {
        b.ok(&create_2d(id, XRGB, 32, 32));
    }
    let shared = pages(&[5]);
    b.ok(&attach(1, &shared));
    b.ok(&attach(2, &shared));
    b.ok(&detach(1));
    b.events();

    // 2 still holds the page: 3 overlaps it.
    b.ok(&attach(3, &shared));
    assert_eq!(
        b.violations(),
        vec![(3, Violation::OverlappingBacking { other: 2 }, ATTACH)]
    );
    // 1 coming back overlaps both.
    b.ok(&attach(1, &shared));
    let mut others: Vec<u32> = b
        .violations()
        .into_iter()
        .map(|(id, v, _)| match v {
            Violation::OverlappingBacking { other } if id == 1 => other,
            v => panic!("unexpected {v:?} on {id}"),
        })
        .collect();
    others.sort();
    assert_eq!(others, vec![2, 3]);

    // When all the others are gone the page is free again.
    b.ok(&detach(2));
    b.ok(&unref(3));
    b.ok(&detach(1));
    b.ok(&attach(1, &shared));
    assert!(b.violations().is_empty());
}

// ---- Guest memory ---------------------------------------------------------

#[test]
fn entries_outside_guest_ram_are_invalid_parameter() {
    // RAM at [0, 64K) and [128K, 192K), a hole between.
    let mut b = Bench::new(DeviceConfig::default(), &[(0, 0x10000), (0x20000, 0x10000)]);
    b.ok(&create_2d(1, XRGB, 32, 32));
    let used = b.dev.host_memory_used();
    b.events();
    let bad: [(&str, Vec<(u64, u32)>); 7] = [
        ("in the hole", vec![(0x10000, 4096)]),
        ("into the hole", vec![(0xf000, 0x2000)]),
        ("past the end", vec![(0x30000, 4096)]),
        ("across the end", vec![(0x2f000, 0x2000)]),
        ("wrapping", vec![(u64::MAX - 0xfff, 4096)]),
        ("empty entry", vec![(0x1000, 0)]),
        ("one good, one bad", vec![(0x1000, 4096), (0x18000, 4096)]),
    ];
    for (what, entries) in bad {
        assert_eq!(b.send(&attach(1, &entries)), INVALID_PARAMETER, "{what}");
        let info = b.info(1);
        assert_eq!(
            (info.backing.as_str(), info.generation),
            ("detached", 0),
            "{what}"
        );
        assert_eq!(b.dev.host_memory_used(), used, "{what}");
    }
    assert!(b.events().is_empty(), "no event, no violation");
    b.ok(&attach(1, &[(0x21000, 4096)]));
    assert_eq!(b.info(1).generation, 1);
}

#[test]
fn a_backing_longer_than_guest_ram_is_invalid_parameter() {
    // 128 KiB of RAM. Repeating a page in one backing is allowed (no
    // overlap with another resource), but not past the size of RAM: the
    // page index would walk the same pages without bound.
    let mut b = Bench::new(DeviceConfig::default(), &[(0, 0x10000), (0x20000, 0x10000)]);
    b.ok(&create_2d(1, XRGB, 32, 32));
    b.ok(&create_2d(2, XRGB, 32, 32));
    let used = b.dev.host_memory_used();
    b.events();
    let whole = [(0x0, 0x10000), (0x20000, 0x10000)];
    let twice: Vec<(u64, u32)> = whole.iter().chain(&whole).copied().collect();
    assert_eq!(b.send(&attach(1, &twice)), INVALID_PARAMETER);
    assert_eq!(b.info(1).backing, "detached");
    assert_eq!(b.dev.host_memory_used(), used);
    let one_page_over = [(0x0, 0x10000), (0x20000, 0x10000), (0x0, 0x1000)];
    assert_eq!(b.send(&attach(1, &one_page_over)), INVALID_PARAMETER);
    assert!(b.events().is_empty(), "no event, no violation");
    // As long as RAM, repeats included, is a backing.
    b.ok(&attach(
        1,
        &[(0x0, 0x8000), (0x0, 0x8000), (0x20000, 0x10000)],
    ));
    assert!(b.violations().is_empty());
    b.ok(&attach(2, &[(0x21000, 0x1000)]));
    assert_eq!(b.violations().len(), 1, "overlap with resource 1");
}

#[test]
fn entries_crossing_two_memory_regions_transfer_correctly() {
    // Two adjacent regions: contiguous for the guest, not on the host.
    let mut b = Bench::new(DeviceConfig::default(), &[(0, 0x10000), (0x10000, 0x10000)]);
    let (w, h) = (64u32, 32u32);
    let stride = (w * 4) as usize;
    let extents = [(0xf800u64, 8192u32)];
    let first = pattern(8192, 10);
    uploaded_2d(&mut b, 1, (w, h), &extents, &first);
    let info = b.info(1);
    assert_eq!(info.host_hash, Some(hash(&first)));
    assert_eq!(info.backing_hash, Some(hash(&first)));

    // A partial transfer whose rows straddle the region boundary.
    let second = pattern(8192, 11);
    b.scatter(&extents, &second);
    let r = rect2d(10, 5, 30, 10);
    let offset = (r.y as usize) * stride + (r.x as usize) * 4;
    b.ok(&transfer(
        1,
        rect(r.x, r.y, r.width, r.height),
        offset as u64,
    ));
    let mut expected = first.clone();
    for y in r.y..r.y + r.height {
        let start = y as usize * stride + r.x as usize * 4;
        let end = start + r.width as usize * 4;
        expected[start..end].copy_from_slice(&second[start..end]);
    }
    assert_ne!(expected, first);
    assert_eq!(b.info(1).host_hash, Some(hash(&expected)));
    b.ok(&set_scanout(0, 1, rect(0, 0, w, h)));
    b.display.take();
    b.ok(&flush(1, rect(0, 0, w, h)));
    assert_eq!(
        b.display.take(),
        vec![Shown::Update {
            scanout: 0,
            rect: rect2d(0, 0, w, h),
            pixels: expected,
        }]
    );
}

#[test]
fn a_new_memory_table_with_the_same_layout_keeps_backings_working() {
    let mut b = Bench::simple();
    let (w, h) = (32, 64);
    let full = rect(0, 0, w, h);
    let extents = pages(&[12, 3]);
    let first = pattern(8192, 20);
    uploaded_2d(&mut b, 1, (w, h), &extents, &first);

    // Same guest layout, a different host mapping with the same contents.
    b.events();
    let old = b.mem.clone();
    let new = guest_memory(&[(0, 1 << 20)]);
    let mut all = vec![0u8; 1 << 20];
    old.read_slice(&mut all, GuestAddress(0)).unwrap();
    new.write_slice(&all, GuestAddress(0)).unwrap();
    b.dev.set_memory(new.clone());
    b.mem = new.clone();
    assert!(b.events().is_empty(), "nothing detached");
    let info = b.info(1);
    assert_eq!((info.backing.as_str(), info.generation), ("attached", 1));
    assert_eq!(info.backing_hash, Some(hash(&first)));

    // Transfers read the new mapping, not the old one.
    let second = pattern(8192, 21);
    scatter(&new, &extents, &second);
    scatter(&old, &extents, &pattern(8192, 22));
    b.ok(&transfer(1, full, 0));
    assert_eq!(b.info(1).host_hash, Some(hash(&second)));
    assert_eq!(b.info(1).backing_hash, Some(hash(&second)));

    // And the state machine goes on in the new table.
    b.ok(&detach(1));
    let third = pattern(8192, 23);
    let moved = pages(&[40, 41]);
    scatter(&new, &moved, &third);
    b.ok(&attach(1, &moved));
    b.ok(&transfer(1, full, 0));
    assert_eq!(b.info(1).host_hash, Some(hash(&third)));
    assert!(b.violations().is_empty());
}

#[test]
fn a_memory_table_without_a_backing_detaches_it_as_a_violation() {
    let mut b = Bench::new(
        DeviceConfig::default(),
        &[(0, 0x10000), (0x100000, 0x10000)],
    );
    let low = pages(&[2]);
    let high = [(0x100000 + PAGE, 4096u32)];
    let content = pattern(4096, 30);
    uploaded_2d(&mut b, 1, (32, 32), &low, &pattern(4096, 31));
    uploaded_2d(&mut b, 2, (32, 32), &high, &content);
    let used = b.dev.host_memory_used();
    b.events();

    b.dev.set_memory(guest_memory(&[(0, 0x10000)]));
    let events = b.events();
    assert_eq!(detaches_of(&events), vec![(2, DetachReason::MemoryRemoved)]);
    assert_eq!(
        violations_of(&events),
        vec![(2, Violation::BackingLeftGuestRam, "set_mem_table")]
    );
    let info = b.info(2);
    assert_eq!((info.backing.as_str(), info.generation), ("detached", 1));
    assert_eq!(info.host_hash, Some(hash(&content)), "host copy kept");
    assert_eq!(b.info(1).backing, "attached");
    assert_eq!(b.dev.host_memory_used(), used - 32, "the entry is freed");
    assert_eq!(b.send(&transfer(2, rect(0, 0, 32, 32), 0)), UNSPEC);
    b.events();

    // The surviving backing still owns its page in the new table.
    b.ok(&attach(2, &low));
    assert_eq!(
        b.violations(),
        vec![(2, Violation::OverlappingBacking { other: 1 }, ATTACH)]
    );
    assert_eq!(b.info(2).generation, 2);
}

// ---- Bounds -----------------------------------------------------------------

#[test]
fn create_2d_whose_row_overflows_u32_is_refused() {
    let mut b = Bench::simple();
    for width in [0x4000_0000, u32::MAX] {
        assert_eq!(
            b.send(&create_2d(1, XRGB, width, 1)),
            INVALID_PARAMETER,
            "width {width}"
        );
    }
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.host_memory_used(), 0);
}

#[test]
fn create_2d_whose_size_overflows_u32_is_refused_without_allocating() {
    let mut b = Bench::simple();
    // 65536 * 65536 overflows u32; the size (16 GiB) is past the limit.
    for (w, h) in [(65536, 65536), (u32::MAX / 4, u32::MAX)] {
        assert_eq!(b.send(&create_2d(1, XRGB, w, h)), OUT_OF_MEMORY, "{w}x{h}");
    }
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.host_memory_used(), 0);
}

#[test]
fn zero_sized_resources_are_refused() {
    let mut b = Bench::simple();
    assert_eq!(b.send(&create_2d(1, XRGB, 0, 16)), INVALID_PARAMETER);
    assert_eq!(b.send(&create_2d(1, XRGB, 16, 0)), INVALID_PARAMETER);
    assert_eq!(
        b.send(&create_blob(1, blob_mem::GUEST, 0, &[])),
        INVALID_PARAMETER
    );
    assert!(b.dev.resource_ids().is_empty());
}

#[test]
fn unknown_formats_are_refused() {
    let mut b = Bench::simple();
    for format in [0, 5, 66, 999, u32::MAX] {
        assert_eq!(
            b.send(&create_2d(1, format, 16, 16)),
            INVALID_PARAMETER,
            "format {format}"
        );
    }
    assert!(b.dev.resource_ids().is_empty());
    b.ok(&create_2d(
        1,
        gpuswap_protocol::format::R8G8B8X8_UNORM,
        16,
        16,
    ));
}

#[test]
fn resource_id_0_is_refused() {
    let mut b = Bench::simple();
    assert_eq!(b.send(&create_2d(0, XRGB, 16, 16)), INVALID_RESOURCE);
    assert_eq!(
        b.send(&create_blob(0, blob_mem::GUEST, 4096, &pages(&[1]))),
        INVALID_RESOURCE
    );
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.host_memory_used(), 0);
}

#[test]
fn a_duplicate_resource_id_is_refused_and_the_live_one_kept() {
    let mut b = Bench::simple();
    let content = pattern(4096, 40);
    uploaded_2d(&mut b, 1, (32, 32), &pages(&[1]), &content);
    let used = b.dev.host_memory_used();
    b.events();
    assert_eq!(b.send(&create_2d(1, XRGB, 64, 64)), INVALID_RESOURCE);
    assert_eq!(
        b.send(&create_blob(1, blob_mem::GUEST, 4096, &[])),
        INVALID_RESOURCE
    );
    assert_eq!(
        b.violations(),
        vec![
            (1, Violation::DuplicateResource, "resource_create_2d"),
            (1, Violation::DuplicateResource, "resource_create_blob"),
        ]
    );
    let info = b.info(1);
    assert_eq!(
        (info.kind.as_str(), info.width, info.height),
        ("2d", Some(32), Some(32))
    );
    assert_eq!((info.backing.as_str(), info.generation), ("attached", 1));
    assert_eq!(info.host_hash, Some(hash(&content)));
    assert_eq!(b.dev.host_memory_used(), used);
}

#[test]
fn host_memory_exhaustion_is_out_of_memory_until_memory_is_freed() {
    // Room for three 64x64 resources (16 KiB + 256 each) and 3 entries.
    let each = 64 * 64 * 4 + 256;
    let config = DeviceConfig {
        max_host_memory: 3 * each + 3 * 32 + 31,
        ..DeviceConfig::default()
    };
    let mut b = Bench::new(config, &[(0, 1 << 20)]);
    for id in 1..=3 {
        b.ok(&create_2d(id, XRGB, 64, 64));
    }
    assert_eq!(b.dev.host_memory_used(), 3 * each);
    assert_eq!(b.send(&create_2d(4, XRGB, 64, 64)), OUT_OF_MEMORY);
    assert_eq!(
        b.send(&create_blob(4, blob_mem::GUEST, 4096, &[])),
        OUT_OF_MEMORY
    );
    // Entries are charged too: four do not fit, three do.
    assert_eq!(b.send(&attach(1, &pages(&[1, 3, 5, 7]))), OUT_OF_MEMORY);
    assert_eq!(b.info(1).backing, "detached");
    b.ok(&attach(1, &pages(&[1, 3, 5])));
    assert_eq!(b.dev.host_memory_used(), 3 * each + 3 * 32);

    b.ok(&unref(2));
    b.ok(&create_2d(4, XRGB, 64, 64));
    b.ok(&unref(1));
    assert_eq!(b.dev.host_memory_used(), 2 * each);
    assert!(b.violations().is_empty());
}

#[test]
fn more_entries_than_the_limit_is_a_decode_error() {
    let config = DeviceConfig {
        max_entries: 4,
        ..DeviceConfig::default()
    };
    let mut b = Bench::new(config, &[(0, 1 << 20)]);
    b.ok(&create_2d(1, XRGB, 64, 64));
    let five = pages(&[1, 2, 3, 4, 5]);
    for bytes in [
        attach(1, &five),
        create_blob(2, blob_mem::GUEST, 20480, &five),
    ] {
        let (hdr, err) = b.decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyEntries {
                nr_entries: 5,
                max: 4
            }
        );
        b.dev.record_malformed(hdr.map(|h| h.type_), &err);
    }
    // A hostile count with no entries behind it is refused the same way.
    let mut huge = attach(1, &[]);
    huge[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    let (_, err) = b.decode(&huge).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooManyEntries {
            nr_entries: u32::MAX,
            max: 4
        }
    );
    assert_eq!(b.dev.counters().malformed, 2);
    assert_eq!(b.dev.resource_count(), 1);
    b.ok(&attach(1, &pages(&[1, 2, 3, 4])));
}

#[test]
fn rects_outside_the_resource_are_invalid_parameter() {
    let mut b = Bench::simple();
    let content = pattern(2048, 50);
    uploaded_2d(&mut b, 1, (32, 16), &pages(&[1]), &content);
    b.scatter(&pages(&[1]), &pattern(2048, 51));
    b.events();
    let outside = [
        rect(0, 0, 33, 16),
        rect(0, 0, 32, 17),
        rect(31, 0, 2, 1),
        rect(0, 16, 1, 1),
        rect(u32::MAX, 0, 2, 1),
        rect(0, u32::MAX, 1, 2),
    ];
    for r in outside {
        assert_eq!(b.send(&transfer(1, r, 0)), INVALID_PARAMETER, "{r:?}");
        assert_eq!(b.send(&flush(1, r)), INVALID_PARAMETER, "{r:?}");
        assert_eq!(b.send(&set_scanout(0, 1, r)), INVALID_PARAMETER, "{r:?}");
    }
    assert!(b.violations().is_empty());
    assert_eq!(b.info(1).host_hash, Some(hash(&content)));
    assert!(b.info(1).scanouts.is_empty());
    // The whole resource is inside.
    b.ok(&transfer(1, rect(0, 0, 32, 16), 0));
}

#[test]
fn transfers_reading_past_the_backing_are_invalid_parameter() {
    let mut b = Bench::simple();
    // 64x32 needs 8 KiB; the backing is one page.
    b.ok(&create_2d(1, XRGB, 64, 32));
    let content = pattern(4096, 60);
    b.scatter(&pages(&[1]), &content);
    b.ok(&attach(1, &pages(&[1])));
    let zero = hash(&[0u8; 8192]);
    let past = [
        (rect(0, 0, 64, 32), 0),
        (rect(0, 0, 64, 16), 1),
        (rect(0, 15, 64, 2), 15 * 256),
        (rect(0, 0, 1, 1), 4093),
        (rect(0, 0, 1, 1), u64::MAX),
        (rect(0, 0, 64, 32), u64::MAX - 100),
    ];
    for (r, offset) in past {
        assert_eq!(
            b.send(&transfer(1, r, offset)),
            INVALID_PARAMETER,
            "{r:?} at {offset}"
        );
        assert_eq!(b.info(1).host_hash, Some(zero.clone()));
    }
    // The rows that are in the backing transfer.
    b.ok(&transfer(1, rect(0, 0, 64, 16), 0));
    b.ok(&transfer(1, rect(63, 15, 1, 1), 4092));
    let mut expected = content.clone();
    expected.resize(8192, 0);
    assert_eq!(b.info(1).host_hash, Some(hash(&expected)));
}

// ---- Fault injection -----------------------------------------------------

#[test]
fn injected_attach_faults_fail_exactly_the_next_two_attaches() {
    let mut b = Bench::simple();
    b.ok(&create_2d(1, XRGB, 32, 32));
    b.ok(&create_blob(2, blob_mem::GUEST, 4096, &[]));
    b.events();
    b.dev.faults_mut().fail_attaches = 2;
    assert_eq!(b.send(&attach(1, &pages(&[1]))), OUT_OF_MEMORY);
    assert_eq!(b.send(&attach(2, &pages(&[2]))), OUT_OF_MEMORY);
    let faults: Vec<(u32, EventKind)> = b
        .events()
        .into_iter()
        .map(|e| (e.resource_id, e.kind))
        .collect();
    let fault = EventKind::Fault {
        fault: InjectedFault::FailAttach,
    };
    assert_eq!(faults, vec![(1, fault.clone()), (2, fault)]);
    assert_eq!(b.info(1).backing, "detached");
    assert_eq!(b.info(2).generation, 0);

    b.ok(&attach(1, &pages(&[1])));
    b.ok(&attach(2, &pages(&[2])));
    assert_eq!(b.dev.faults().fail_attaches, 0);
    assert_eq!(b.dev.counters().faults_injected, 2);
    assert_eq!((b.info(1).generation, b.info(2).generation), (1, 1));
    assert!(b.violations().is_empty());
}

/// Faults among `events`, as (resource, generation, fault).
fn faults_of(events: &[gpuswap_device::trace::Event]) -> Vec<(u32, u64, InjectedFault)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Fault { fault } => Some((e.resource_id, e.generation, fault)),
            _ => None,
        })
        .collect()
}

#[test]
fn injected_transfer_corruption_flips_one_host_byte_of_exactly_the_next_two_transfers() {
    let mut b = Bench::simple();
    let (w, h) = (32u32, 16u32);
    let stride = (w * 4) as usize;
    let content = pattern(stride * h as usize, 7);
    let extents = pages(&[1]);
    uploaded_2d(&mut b, 1, (w, h), &extents, &content);
    b.ok(&create_blob(2, blob_mem::GUEST, 4096, &pages(&[2])));
    b.ok(&create_2d(3, XRGB, w, h));
    b.events();
    b.dev.faults_mut().corrupt_transfers = 2;

    // Failed, empty and blob transfers do not use the fault up.
    assert_eq!(
        b.send(&transfer(1, rect(30, 0, 4, 1), 0)),
        INVALID_PARAMETER
    );
    assert_eq!(b.send(&transfer(3, rect(0, 0, w, h), 0)), UNSPEC);
    b.ok(&transfer(1, rect(5, 5, 0, 3), 0));
    b.ok(&transfer(2, rect(0, 0, 16, 16), 0));
    assert_eq!(b.dev.faults().corrupt_transfers, 2);
    assert_eq!(b.dev.counters().faults_injected, 0);
    assert!(faults_of(&b.events()).is_empty());
    assert_eq!(b.info(1).host_hash, Some(hash(&content)));

    // 1: a whole transfer; its first byte, at 0, is flipped after the
    // copy. The guest's data is untouched.
    b.ok(&transfer(1, rect(0, 0, w, h), 0));
    let mut expected = content.clone();
    expected[0] ^= 0xff;
    let info = b.info(1);
    assert_eq!(info.host_hash, Some(hash(&expected)));
    assert_ne!(info.host_hash, info.backing_hash);
    assert_eq!(info.backing_hash, Some(hash(&content)));
    let events = b.events();
    assert!(matches!(events[0].kind, EventKind::Transfer { .. }));
    assert_eq!(
        faults_of(&events),
        vec![(1, 1, InjectedFault::CorruptTransfer { host_offset: 0 })]
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (
            b.dev.faults().corrupt_transfers,
            b.dev.counters().faults_injected
        ),
        (1, 1)
    );

    // 2: a sub-rect after an evict/restore (generation 2); its first byte
    // is at row 2, pixel 3 of the host copy.
    b.ok(&detach(1));
    b.ok(&attach(1, &extents));
    let r = rect(3, 2, 4, 4);
    let first = 2 * stride + 3 * 4;
    b.ok(&transfer(1, r, first as u64));
    expected[first] ^= 0xff;
    assert_eq!(b.info(1).host_hash, Some(hash(&expected)));
    assert_eq!(
        faults_of(&b.events()),
        vec![(
            1,
            2,
            InjectedFault::CorruptTransfer {
                host_offset: first as u64
            }
        )]
    );
    assert_eq!(
        (
            b.dev.faults().corrupt_transfers,
            b.dev.counters().faults_injected
        ),
        (0, 2)
    );

    // Spent: the next transfer is clean and repairs the host copy.
    b.ok(&transfer(1, rect(0, 0, w, h), 0));
    assert_eq!(b.info(1).host_hash, Some(hash(&content)));
    assert!(faults_of(&b.events()).is_empty());
    assert_eq!(b.dev.counters().faults_injected, 2);
    assert_eq!(
        b.dev.counters().violations,
        1,
        "only the transfer to the detached resource 3"
    );
}

// ---- Cursor -------------------------------------------------------------

#[test]
fn update_cursor_sends_the_64x64_image_to_the_display() {
    let mut b = Bench::simple();
    let image = pattern(64 * 64 * 4, 70);
    uploaded_2d(&mut b, 1, (64, 64), &pages(&[1, 2, 3, 4]), &image);
    b.display.take();
    let resp = b.send_cursor(&cursor(t::UPDATE_CURSOR, 0, 100, 200, 1, (3, 4)));
    assert_eq!(resp, Response::OkNoData);
    assert_eq!(
        b.display.take(),
        vec![Shown::Cursor {
            scanout: 0,
            x: 100,
            y: 200,
            hot: (3, 4),
            image,
        }]
    );
}

#[test]
fn a_cursor_must_be_64x64() {
    let mut b = Bench::simple();
    uploaded_2d(&mut b, 1, (32, 32), &pages(&[1]), &pattern(4096, 71));
    uploaded_2d(&mut b, 2, (64, 32), &pages(&[2, 3]), &pattern(8192, 72));
    b.display.take();
    for id in [1, 2] {
        assert_eq!(
            b.send_cursor(&cursor(t::UPDATE_CURSOR, 0, 0, 0, id, (0, 0))),
            INVALID_PARAMETER
        );
    }
    b.ok(&create_blob(
        3,
        blob_mem::GUEST,
        16384,
        &pages(&[4, 5, 6, 7]),
    ));
    assert_eq!(
        b.send_cursor(&cursor(t::UPDATE_CURSOR, 0, 0, 0, 3, (0, 0))),
        INVALID_PARAMETER
    );
    assert!(b.display.take().is_empty());
}

#[test]
fn move_cursor_moves_it() {
    let mut b = Bench::simple();
    let resp = b.send_cursor(&cursor(t::MOVE_CURSOR, 0, 33, 44, 0, (0, 0)));
    assert_eq!(resp, Response::OkNoData);
    assert_eq!(
        b.display.take(),
        vec![Shown::CursorMove {
            scanout: 0,
            x: 33,
            y: 44
        }]
    );
    // A scanout that does not exist is ignored.
    b.send_cursor(&cursor(t::MOVE_CURSOR, 5, 1, 1, 0, (0, 0)));
    assert!(b.display.take().is_empty());
}

#[test]
fn update_cursor_with_resource_0_hides_it() {
    let mut b = Bench::simple();
    let resp = b.send_cursor(&cursor(t::UPDATE_CURSOR, 0, 10, 10, 0, (0, 0)));
    assert_eq!(resp, Response::OkNoData);
    assert_eq!(b.display.take(), vec![Shown::CursorHide { scanout: 0 }]);
    assert!(b.violations().is_empty());
}

// ---- The rest of the control queue ----------------------------------------

#[test]
fn get_display_info_reports_the_configured_modes() {
    let mut b = Bench::simple();
    let Response::OkDisplayInfo(pmodes) = b.send(&request(t::GET_DISPLAY_INFO, &[])) else {
        panic!("not display info");
    };
    assert_eq!(
        (pmodes[0].r.width, pmodes[0].r.height, pmodes[0].enabled),
        (1280, 800, 1)
    );
    assert!(pmodes[1..].iter().all(|m| m.enabled == 0 && m.r.width == 0));

    let config = DeviceConfig {
        scanouts: vec![(1024, 768), (640, 480)],
        ..DeviceConfig::default()
    };
    let mut b = Bench::new(config, &[(0, 1 << 20)]);
    assert_eq!(b.dev.num_scanouts(), 2);
    let Response::OkDisplayInfo(pmodes) = b.send(&request(t::GET_DISPLAY_INFO, &[])) else {
        panic!("not display info");
    };
    let modes: Vec<(u32, u32, u32)> = pmodes
        .iter()
        .take(3)
        .map(|m| (m.r.width, m.r.height, m.enabled))
        .collect();
    assert_eq!(modes, vec![(1024, 768, 1), (640, 480, 1), (0, 0, 0)]);
}

#[test]
fn get_edid_describes_the_configured_mode() {
    let mut b = Bench::simple();
    let body = GetEdid {
        scanout: 0,
        padding: 0,
    };
    let Response::OkEdid(blob, size) = b.send(&request(t::GET_EDID, body.as_slice())) else {
        panic!("not an EDID");
    };
    assert_eq!(size, 128);
    assert_eq!(&blob[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(blob[..128].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    let w = u32::from(blob[56]) | (u32::from(blob[58] >> 4) << 8);
    let h = u32::from(blob[59]) | (u32::from(blob[61] >> 4) << 8);
    assert_eq!((w, h), (1280, 800));
    assert!(blob[128..].iter().all(|&b| b == 0));
    let body = GetEdid {
        scanout: 1,
        padding: 0,
    };
    assert_eq!(
        b.send(&request(t::GET_EDID, body.as_slice())),
        Response::Err(ErrorCode::InvalidScanoutId)
    );
}

#[test]
fn capsets_are_refused_because_there_are_none() {
    let mut b = Bench::simple();
    let info = GetCapsetInfo {
        capset_index: 0,
        padding: 0,
    };
    assert_eq!(
        b.send(&request(t::GET_CAPSET_INFO, info.as_slice())),
        INVALID_PARAMETER
    );
    let capset = GetCapset {
        capset_id: 1,
        capset_version: 0,
    };
    assert_eq!(
        b.send(&request(t::GET_CAPSET, capset.as_slice())),
        INVALID_PARAMETER
    );
}

#[test]
fn context_3d_and_map_blob_commands_are_unspec() {
    let mut b = Bench::simple();
    b.ok(&create_blob(1, blob_mem::GUEST, 4096, &pages(&[1])));
    for type_ in t::CTX_CREATE..=t::SUBMIT_3D {
        // Bodies are not read; give each enough bytes anyway.
        assert_eq!(b.send(&request(type_, &[0; 64])), UNSPEC, "{type_:#x}");
    }
    let map = ResourceMapBlob {
        resource_id: 1,
        padding: 0,
        offset: 0,
    };
    assert_eq!(
        b.send(&request(t::RESOURCE_MAP_BLOB, map.as_slice())),
        UNSPEC
    );
    assert_eq!(
        b.send(&request(t::RESOURCE_UNMAP_BLOB, &[1, 0, 0, 0, 0, 0, 0, 0])),
        UNSPEC
    );
    assert_eq!(b.info(1).backing, "attached");
}

#[test]
fn reset_frees_every_resource() {
    let mut b = Bench::simple();
    uploaded_2d(&mut b, 1, (32, 32), &pages(&[1]), &pattern(4096, 80));
    b.ok(&create_2d(2, XRGB, 32, 32));
    b.ok(&create_blob(3, blob_mem::GUEST, 8192, &pages(&[4, 5])));
    b.ok(&set_scanout(0, 1, rect(0, 0, 32, 32)));
    b.events();
    b.display.take();

    b.dev.reset();
    let events = b.events();
    assert_eq!(
        detaches_of(&events),
        vec![(1, DetachReason::Reset), (3, DetachReason::Reset)]
    );
    let unrefs: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == EventKind::Unref)
        .map(|e| e.resource_id)
        .collect();
    assert_eq!(unrefs, vec![1, 2, 3]);
    assert!(violations_of(&events).is_empty());
    assert_eq!(
        b.display.take(),
        vec![Shown::Scanout {
            scanout: 0,
            width: 0,
            height: 0
        }]
    );
    assert!(b.dev.resource_ids().is_empty());
    assert_eq!(b.dev.host_memory_used(), 0);

    // Ids and pages are free again.
    b.ok(&create_2d(1, XRGB, 32, 32));
    b.ok(&attach(1, &pages(&[4, 5])));
    assert!(b.violations().is_empty());
}
