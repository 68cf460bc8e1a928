//! Every virtio-gpu command against the real daemon over a real vhost-user
//! socket, checked from the guest side (responses), the display channel
//! and the control socket.

mod common;

use common::*;
use gpuswap_api::control::{Backing, Event, EventKind, ResourceKind};
use gpuswap_device::RESOURCE_OVERHEAD;
use gpuswap_frontend::display_server::protocol_features;
use gpuswap_frontend::{
    commands, DisplayConfig, DisplayEvent, Fence, FrontendConfig, Placement, QueueId, ScanoutMode,
};
use gpuswap_protocol::wire::{CursorPos, Rect, ResourceMapBlob, SetScanoutBlob, UpdateCursor};
use gpuswap_protocol::{blob_mem, ctrl_type, features, flags, format, ErrorCode};
use gpuswap_testkit::pattern;
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;

fn edid_checksum_ok(e: &[u8]) -> bool {
    e.len() == 128 && e.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

/// Preferred mode of an EDID's first detailed timing.
fn edid_mode(e: &[u8]) -> (u32, u32) {
    let w = u32::from(e[56]) | (u32::from(e[58] >> 4) << 8);
    let h = u32::from(e[59]) | (u32::from(e[61] >> 4) << 8);
    (w, h)
}

/// The pixels of `r` inside an image `width` pixels wide with rows
/// `stride` bytes apart starting at `offset`, packed row after row.
fn sub_image(image: &[u8], stride: usize, offset: usize, r: Rect) -> Vec<u8> {
    let mut out = Vec::with_capacity((r.width * r.height * 4) as usize);
    for y in r.y..r.y + r.height {
        let start = offset + y as usize * stride + r.x as usize * 4;
        out.extend_from_slice(&image[start..start + r.width as usize * 4]);
    }
    out
}

/// A display with one enabled `width` x `height` scanout.
fn one_scanout(width: u32, height: u32) -> DisplayConfig {
    DisplayConfig {
        scanouts: vec![ScanoutMode {
            width,
            height,
            enabled: true,
        }],
        ..Default::default()
    }
}

#[test]
fn get_display_info_asks_the_display_channel() {
    let d = Daemon::spawn("dinfo", &[]);
    let display = one_scanout(1024, 600);
    let mut gpu = d.connect(FrontendConfig {
        display: Some(display),
        ..Default::default()
    });
    let handle = gpu.display().unwrap().clone();
    let mark = handle.event_count();
    let pmodes = gpu.get_display_info().unwrap();
    // The display's mode, not the daemon's --scanout default.
    assert_eq!(
        (pmodes[0].r.width, pmodes[0].r.height, pmodes[0].enabled),
        (1024, 600, 1)
    );
    assert!(pmodes[1..].iter().all(|p| p.enabled == 0 && p.r.width == 0));
    wait_display(&handle, mark, "GET_DISPLAY_INFO", |e| {
        *e == DisplayEvent::GetDisplayInfo
    });
}

#[test]
fn get_display_info_headless_uses_scanout_option() {
    let d = Daemon::spawn(
        "dinfo-hl",
        &["--scanout", "640x480", "--scanout", "800x600"],
    );
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let pmodes = gpu.get_display_info().unwrap();
    let modes: Vec<_> = pmodes[..3]
        .iter()
        .map(|p| (p.r.width, p.r.height, p.enabled))
        .collect();
    assert_eq!(modes, vec![(640, 480, 1), (800, 600, 1), (0, 0, 0)]);
    let cfg = gpu.read_config().unwrap();
    assert_eq!((cfg.num_scanouts, cfg.num_capsets), (2, 0));
}

#[test]
fn get_edid_from_the_display_channel() {
    // A mode other than the daemon's own (--scanout, 1280x800), so that
    // the EDID shows where it came from.
    let d = Daemon::spawn("edid", &[]);
    let display = one_scanout(1024, 600);
    let mut gpu = d.connect(FrontendConfig {
        display: Some(display.clone()),
        ..Default::default()
    });
    let handle = gpu.display().unwrap().clone();
    let mark = handle.event_count();
    let edid = gpu.get_edid(0).unwrap();
    // The daemon negotiates on first use (QEMU cannot answer inside
    // GPU_SET_SOCKET) and takes EDID, and only EDID, from the features.
    assert_eq!(
        handle.wait_protocol_features(WAIT),
        Some(protocol_features::EDID)
    );
    assert_eq!(edid, display.edid(0).unwrap().to_vec());
    assert_eq!(edid_mode(&edid), (1024, 600));
    assert!(edid_checksum_ok(&edid));
    wait_display(&handle, mark, "GET_EDID", |e| {
        *e == DisplayEvent::GetEdid { scanout_id: 0 }
    });
    assert_eq!(code(gpu.get_edid(1)), ErrorCode::InvalidScanoutId);
}

#[test]
fn get_edid_is_not_asked_of_a_display_without_the_edid_feature() {
    let d = Daemon::spawn("edid-nofeat", &["--scanout", "1600x900"]);
    let mut gpu = d.connect(FrontendConfig {
        display: Some(DisplayConfig {
            protocol_features: 0,
            ..Default::default()
        }),
        ..Default::default()
    });
    let handle = gpu.display().unwrap().clone();
    let edid = gpu.get_edid(0).unwrap();
    assert_eq!(handle.wait_protocol_features(WAIT), Some(0));
    assert!(edid_checksum_ok(&edid));
    assert_eq!(edid_mode(&edid), (1600, 900), "generated from --scanout");
    assert!(
        !handle
            .events()
            .iter()
            .any(|e| matches!(e, DisplayEvent::GetEdid { .. })),
        "GET_EDID sent to a display that did not offer EDID"
    );
}

#[test]
fn get_edid_headless_is_generated_for_the_scanout_mode() {
    let d = Daemon::spawn(
        "edid-hl",
        &["--scanout", "1920x1080", "--scanout", "800x600"],
    );
    let mut gpu = d.connect(FrontendConfig::default().headless());
    for (scanout, mode) in [(0, (1920, 1080)), (1, (800, 600))] {
        let edid = gpu.get_edid(scanout).unwrap();
        assert_eq!(&edid[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert!(edid_checksum_ok(&edid), "checksum of scanout {scanout}");
        assert_eq!(edid_mode(&edid), mode);
    }
    assert_eq!(code(gpu.get_edid(2)), ErrorCode::InvalidScanoutId);
}

#[test]
fn resource_create_2d_and_unref() {
    let d = Daemon::spawn("create", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let seq = ctl.last_seq();
    gpu.resource_create_2d(7, format::R8G8B8A8_UNORM, 33, 17)
        .unwrap();
    let r = ctl.live(7);
    assert_eq!(r.kind, ResourceKind::TwoD);
    assert_eq!(r.format, Some(format::R8G8B8A8_UNORM));
    assert_eq!((r.width, r.height), (Some(33), Some(17)));
    assert_eq!(r.size, 33 * 17 * 4);
    assert_eq!(r.backing, Backing::Detached);
    assert_eq!(r.generation, 0);
    // A fresh host copy is zeroed.
    assert_eq!(r.host_hash, some_hash(&vec![0; 33 * 17 * 4]));
    assert!(r.backing_hash.is_none());
    let st = ctl.status().unwrap();
    assert_eq!(st.resources, 1);
    assert_eq!(st.host_memory_used, 33 * 17 * 4 + RESOURCE_OVERHEAD);

    assert_eq!(
        code(gpu.resource_create_2d(7, FMT, 4, 4)),
        ErrorCode::InvalidResourceId,
        "duplicate id"
    );
    gpu.resource_unref(7).unwrap();
    assert!(ctl.resource(7).unwrap().is_none());
    assert_eq!(ctl.status().unwrap().host_memory_used, 0);
    assert_eq!(code(gpu.resource_unref(7)), ErrorCode::InvalidResourceId);

    let trace = ctl.trace(seq, Some(7)).unwrap();
    let kinds: Vec<_> = trace.iter().map(Event::name).collect();
    assert_eq!(kinds, ["create", "violation", "unref", "violation"]);
}

#[test]
fn attach_detach_backing_show_on_the_control_socket() {
    let d = Daemon::spawn("attach", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let (w, h) = (50u32, 30u32);
    let size = (w * h * 4) as usize;
    gpu.resource_create_2d(1, FMT, w, h).unwrap();
    let pages = gpu
        .ram_mut()
        .alloc(size.div_ceil(4096), Placement::Scattered)
        .unwrap();
    let pix = pattern(pages.bytes() as usize, 1);
    gpu.ram().write_entries(&pages.entries(), 0, &pix).unwrap();
    gpu.attach_backing(1, &pages.entries()).unwrap();
    let r = ctl.live(1);
    assert_eq!(r.backing, Backing::Attached);
    assert_eq!(r.generation, 1);
    assert_eq!(r.entries, pages.entries().len() as u64);
    assert_eq!(r.backing_bytes, pages.bytes());
    // Hash of the first `size` bytes, not of the whole backing.
    assert_eq!(r.backing_hash, some_hash(&pix[..size]));
    // Not transferred yet: the host copy is still zero.
    assert_eq!(r.host_hash, some_hash(&vec![0; size]));

    gpu.detach_backing(1).unwrap();
    let r = ctl.live(1);
    assert_eq!(r.backing, Backing::Detached);
    assert_eq!((r.entries, r.backing_bytes), (0, 0));
    assert!(r.backing_hash.is_none());
    assert_eq!(r.generation, 1);
    let c = ctl.counters().unwrap().counters;
    assert_eq!((c.attaches, c.detaches), (1, 1));
}

#[test]
fn set_scanout_flush_and_partial_transfer_reach_the_display() {
    let d = Daemon::spawn("scanout", &[]);
    let mut gpu = d.connect(FrontendConfig::default());
    let display = gpu.display().unwrap().clone();
    let mut ctl = d.ctl();
    let (w, h) = (100u32, 60u32);
    let stride = (w * 4) as usize;
    let size = stride * h as usize;
    let pix = pattern(size, 11);
    let pages = upload_2d(&mut gpu, 1, (w, h), &pix);
    let entries = pages.entries();

    let mark = display.event_count();
    gpu.set_scanout(0, 1, rect(0, 0, w, h)).unwrap();
    wait_display(&display, mark, "SCANOUT", |e| {
        *e == DisplayEvent::Scanout {
            scanout_id: 0,
            width: w,
            height: h,
        }
    });
    let mark = display.event_count();
    gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, rect(0, 0, w, h));
    assert!(
        data == pix,
        "full UPDATE differs from the transferred pixels"
    );
    assert_eq!(ctl.live(1).scanouts, [0]);

    // Partial transfer with the QEMU/Linux offset convention (offset of
    // the rect's first pixel), then a partial flush.
    let pix2 = pattern(size, 12);
    gpu.ram().write_entries(&entries, 0, &pix2).unwrap();
    let part = rect(10, 5, 20, 10);
    let offset = (part.y as usize * stride + part.x as usize * 4) as u64;
    gpu.transfer_to_host_2d(1, part, offset).unwrap();
    let mut expect = pix.clone();
    for y in part.y..part.y + part.height {
        let a = y as usize * stride + part.x as usize * 4;
        let b = a + part.width as usize * 4;
        expect[a..b].copy_from_slice(&pix2[a..b]);
    }
    assert_eq!(ctl.live(1).host_hash, some_hash(&expect));
    let mark = display.event_count();
    gpu.resource_flush(1, part).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, part);
    assert!(
        data == sub_image(&pix2, stride, 0, part),
        "partial UPDATE differs from the transferred rect"
    );
    assert!(display.framebuffer(0).unwrap().data == expect);

    // A scanout showing a sub-rectangle of the resource: updates arrive in
    // scanout coordinates.
    let shown = rect(20, 10, 50, 30);
    let mark = display.event_count();
    gpu.set_scanout(0, 1, shown).unwrap();
    wait_display(&display, mark, "SCANOUT", |e| {
        *e == DisplayEvent::Scanout {
            scanout_id: 0,
            width: 50,
            height: 30,
        }
    });
    let mark = display.event_count();
    gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, rect(0, 0, 50, 30));
    assert!(data == sub_image(&expect, stride, 0, shown));

    // Resource 0 disables the scanout.
    let mark = display.event_count();
    gpu.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap();
    wait_display(&display, mark, "SCANOUT off", |e| {
        matches!(e, DisplayEvent::Scanout { width: 0, .. })
    });
    assert_eq!(ctl.live(1).scanouts, Vec::<u32>::new());
    assert!(display.errors().is_empty(), "{:?}", display.errors());
}

#[test]
fn transfer_to_host_2d_checks_rect_and_offset() {
    let d = Daemon::spawn("transfer", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let (w, h) = (16u32, 16u32);
    let pix = pattern((w * h * 4) as usize, 3);
    upload_2d(&mut gpu, 1, (w, h), &pix);
    assert_eq!(ctl.live(1).host_hash, some_hash(&pix));
    let trace = ctl.trace(0, Some(1)).unwrap();
    let t = events_of(&trace, "transfer");
    assert_eq!(t.len(), 1);
    let full = gpuswap_api::control::Rect {
        x: 0,
        y: 0,
        width: 16,
        height: 16,
    };
    assert_eq!(
        t[0].kind,
        EventKind::Transfer {
            rect: full,
            offset: 0
        }
    );
    assert_eq!(t[0].generation, 1);
    // Outside the resource, past the one-page backing.
    for (r, offset) in [
        (rect(8, 8, 9, 1), 0),
        (rect(0, 0, 16, 16), 4096 - 16 * 16 * 4 + 1),
        (rect(0, 15, 1, 1), u64::MAX - 8),
        (rect(u32::MAX, 0, 2, 1), 0),
    ] {
        assert_eq!(
            code(gpu.transfer_to_host_2d(1, r, offset)),
            ErrorCode::InvalidParameter,
            "{r:?} at {offset}"
        );
    }
    assert_eq!(ctl.live(1).host_hash, some_hash(&pix));
    // An empty rect is a no-op.
    gpu.transfer_to_host_2d(1, rect(3, 3, 0, 5), 0).unwrap();
    // Data may start before the rect's own position, as QEMU allows: row
    // h of rect (1,1,2,2) comes from offset 0 + h * stride.
    gpu.transfer_to_host_2d(1, rect(1, 1, 2, 2), 0).unwrap();
    let stride = (w * 4) as usize;
    let mut expected = pix.clone();
    for h in 0..2 {
        let dst = (1 + h) * stride + 4;
        expected[dst..dst + 8].copy_from_slice(&pix[h * stride..h * stride + 8]);
    }
    assert_eq!(ctl.live(1).host_hash, some_hash(&expected));
}

#[test]
fn capsets_do_not_exist() {
    let d = Daemon::spawn("capset", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    assert_eq!(gpu.gpu_config().unwrap().num_capsets, 0);
    assert_eq!(gpu.read_config().unwrap().num_capsets, 0);
    assert_eq!(code(gpu.get_capset_info(0)), ErrorCode::InvalidParameter);
    assert_eq!(code(gpu.get_capset(1, 0, 64)), ErrorCode::InvalidParameter);
    gpu.get_display_info().unwrap();
}

#[test]
fn guest_blob_with_entries() {
    let d = Daemon::spawn("blob", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let size: usize = 3 * 4096 + 100;
    let pages = gpu.ram_mut().alloc(4, Placement::Scattered).unwrap();
    let content = pattern(pages.bytes() as usize, 21);
    gpu.ram()
        .write_entries(&pages.entries(), 0, &content)
        .unwrap();
    gpu.resource_create_blob(5, blob_mem::GUEST, 0, size as u64, &pages.entries())
        .unwrap();
    let r = ctl.live(5);
    assert_eq!(r.kind, ResourceKind::Blob);
    assert_eq!(r.size, size as u64);
    assert_eq!(r.backing, Backing::Attached);
    assert_eq!(r.generation, 1);
    assert_eq!(r.backing_bytes, 4 * 4096);
    assert_eq!(r.backing_hash, some_hash(&content[..size]));
    assert!(r.host_hash.is_none());
    // The blob's content is its backing: a guest write shows at once.
    gpu.ram()
        .write_entries(&pages.entries(), 0, &[0xee; 8])
        .unwrap();
    let mut now = content.clone();
    now[..8].fill(0xee);
    assert_eq!(ctl.live(5).backing_hash, some_hash(&now[..size]));
    // Too short a backing for the blob is refused and creates nothing.
    let small = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    assert_eq!(
        code(gpu.resource_create_blob(6, blob_mem::GUEST, 0, 8192, &small.entries())),
        ErrorCode::InvalidParameter
    );
    assert!(ctl.resource(6).unwrap().is_none());
    gpu.resource_unref(5).unwrap();
    assert_eq!(ctl.status().unwrap().host_memory_used, 0);
}

#[test]
fn guest_blob_without_entries_attaches_later() {
    let d = Daemon::spawn("blob0", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let size = 2 * 4096;
    gpu.resource_create_blob(9, blob_mem::GUEST, 0, size, &[])
        .unwrap();
    let r = ctl.live(9);
    assert_eq!(
        (r.backing, r.generation, r.size),
        (Backing::Detached, 0, size)
    );
    assert!(r.backing_hash.is_none());
    let pages = gpu.ram_mut().alloc(2, Placement::Scattered).unwrap();
    let content = pattern(size as usize, 22);
    gpu.ram()
        .write_entries(&pages.entries(), 0, &content)
        .unwrap();
    // One page is not enough for two pages of blob.
    assert_eq!(
        code(gpu.attach_backing(9, &pages.entries()[..1])),
        ErrorCode::InvalidParameter
    );
    gpu.attach_backing(9, &pages.entries()).unwrap();
    let r = ctl.live(9);
    assert_eq!((r.backing, r.generation), (Backing::Attached, 1));
    assert_eq!(r.backing_hash, some_hash(&content));
    // Evict and restore like a 2D resource.
    gpu.detach_backing(9).unwrap();
    gpu.attach_backing(9, &pages.entries()).unwrap();
    assert_eq!(ctl.live(9).generation, 2);
}

#[test]
fn set_scanout_blob_honors_stride_and_offset() {
    let d = Daemon::spawn("sblob", &[]);
    let mut gpu = d.connect(FrontendConfig::default());
    let display = gpu.display().unwrap().clone();
    let (w, h) = (40u32, 30u32);
    let stride = w as usize * 4 + 64;
    let offset = 512usize;
    let size = offset + stride * h as usize;
    let pages = gpu
        .ram_mut()
        .alloc(size.div_ceil(4096), Placement::Scattered)
        .unwrap();
    let content = pattern(size, 31);
    gpu.ram()
        .write_entries(&pages.entries(), 0, &content)
        .unwrap();
    gpu.resource_create_blob(3, blob_mem::GUEST, 0, size as u64, &pages.entries())
        .unwrap();
    let mut args = SetScanoutBlob {
        r: rect(0, 0, w, h),
        scanout_id: 0,
        resource_id: 3,
        width: w,
        height: h,
        format: FMT,
        ..Default::default()
    };
    args.strides[0] = stride as u32;
    args.offsets[0] = offset as u32;
    let mark = display.event_count();
    gpu.set_scanout_blob(&args).unwrap();
    wait_display(&display, mark, "SCANOUT", |e| {
        *e == DisplayEvent::Scanout {
            scanout_id: 0,
            width: w,
            height: h,
        }
    });
    let mark = display.event_count();
    gpu.resource_flush(3, rect(0, 0, w, h)).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, rect(0, 0, w, h));
    assert!(data == sub_image(&content, stride, offset, rect(0, 0, w, h)));

    // No transfer for blobs: the flush reads the guest's pages.
    let content2 = pattern(size, 32);
    gpu.ram()
        .write_entries(&pages.entries(), 0, &content2)
        .unwrap();
    let part = rect(5, 7, 10, 4);
    let mark = display.event_count();
    gpu.resource_flush(3, part).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, part);
    assert!(data == sub_image(&content2, stride, offset, part));

    // A layout past the end of the blob is refused.
    args.offsets[0] = (offset + 4096) as u32;
    assert_eq!(
        code(gpu.set_scanout_blob(&args)),
        ErrorCode::InvalidParameter
    );
    // SET_SCANOUT_BLOB needs a blob, SET_SCANOUT a 2D resource.
    assert_eq!(
        code(gpu.set_scanout(0, 3, rect(0, 0, 1, 1))),
        ErrorCode::InvalidParameter
    );
}

#[test]
fn resource_assign_uuid() {
    let d = Daemon::spawn("uuid", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(4, FMT, 8, 8).unwrap();
    let uuid = gpu.resource_assign_uuid(4).unwrap();
    assert_eq!(uuid[6] >> 4, 4, "RFC 4122 version 4");
    assert_eq!(uuid[8] >> 6, 0b10, "RFC 4122 variant");
    assert_eq!(gpu.resource_assign_uuid(4).unwrap(), uuid, "stable");
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ctl.live(4).uuid, Some(hex));
    gpu.resource_create_2d(5, FMT, 8, 8).unwrap();
    assert_ne!(gpu.resource_assign_uuid(5).unwrap(), uuid);
    assert_eq!(
        code(gpu.resource_assign_uuid(99)),
        ErrorCode::InvalidResourceId
    );
}

#[test]
fn cursor_update_and_move_reach_the_display() {
    let d = Daemon::spawn("cursor", &[]);
    let mut gpu = d.connect(FrontendConfig::default());
    let display = gpu.display().unwrap().clone();
    let img = pattern(64 * 64 * 4, 41);
    upload_2d(&mut gpu, 9, (64, 64), &img);
    let pos = |x, y| CursorPos {
        scanout_id: 0,
        x,
        y,
        padding: 0,
    };

    // Without a response buffer, as Linux sends it: completed empty.
    let mark = display.event_count();
    assert_eq!(gpu.update_cursor(pos(10, 20), 9, 3, 4).unwrap(), 0);
    match wait_display(&display, mark, "CURSOR_UPDATE", |e| {
        matches!(e, DisplayEvent::CursorUpdate { .. })
    }) {
        DisplayEvent::CursorUpdate {
            scanout_id,
            x,
            y,
            hot_x,
            hot_y,
            data,
        } => {
            assert_eq!((scanout_id, x, y, hot_x, hot_y), (0, 10, 20, 3, 4));
            assert!(data == img, "cursor image differs");
        }
        _ => unreachable!(),
    }
    let mark = display.event_count();
    assert_eq!(gpu.move_cursor(pos(30, 40), 9).unwrap(), 0);
    wait_display(&display, mark, "CURSOR_POS", |e| {
        *e == DisplayEvent::CursorPos {
            scanout_id: 0,
            x: 30,
            y: 40,
        }
    });

    // With a response buffer: OK_NODATA, fence echoed.
    let body = UpdateCursor {
        pos: pos(5, 6),
        resource_id: 9,
        hot_x: 1,
        hot_y: 2,
        padding: 0,
    };
    let fence = Fence::new(77);
    let req = commands::encode_request(
        &commands::request_header(ctrl_type::UPDATE_CURSOR, Some(fence)),
        body.as_slice(),
        &[],
    );
    let mark = display.event_count();
    let resp = gpu.submit(QueueId::Cursor, &req, 24).unwrap();
    commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, Some(fence)).unwrap();
    wait_display(&display, mark, "CURSOR_UPDATE", |e| {
        matches!(
            e,
            DisplayEvent::CursorUpdate {
                x: 5,
                y: 6,
                hot_x: 1,
                hot_y: 2,
                ..
            }
        )
    });
    let req = commands::encode_request(
        &commands::request_header(ctrl_type::MOVE_CURSOR, None),
        UpdateCursor {
            pos: pos(7, 8),
            ..body
        }
        .as_slice(),
        &[],
    );
    let mark = display.event_count();
    let resp = gpu.submit(QueueId::Cursor, &req, 24).unwrap();
    commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None).unwrap();
    wait_display(&display, mark, "CURSOR_POS", |e| {
        *e == DisplayEvent::CursorPos {
            scanout_id: 0,
            x: 7,
            y: 8,
        }
    });

    // UPDATE_CURSOR with resource 0 hides the cursor.
    let mark = display.event_count();
    gpu.update_cursor(pos(1, 2), 0, 0, 0).unwrap();
    wait_display(&display, mark, "CURSOR_POS_HIDE", |e| {
        matches!(e, DisplayEvent::CursorPosHide { scanout_id: 0, .. })
    });

    // Errors: a non-64x64 cursor, a bad scanout, a control command on the
    // cursor queue.
    gpu.resource_create_2d(10, FMT, 32, 32).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(10, &p.entries()).unwrap();
    let bad = |id: u32, scanout: u32| {
        commands::encode_request(
            &commands::request_header(ctrl_type::UPDATE_CURSOR, None),
            UpdateCursor {
                pos: CursorPos {
                    scanout_id: scanout,
                    ..pos(0, 0)
                },
                resource_id: id,
                ..body
            }
            .as_slice(),
            &[],
        )
    };
    let resp = gpu.submit(QueueId::Cursor, &bad(10, 0), 24).unwrap();
    assert_eq!(
        commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidParameter)
    );
    let resp = gpu.submit(QueueId::Cursor, &bad(9, 5), 24).unwrap();
    assert_eq!(
        commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidScanoutId)
    );
    let info = commands::encode_request(
        &commands::request_header(ctrl_type::GET_DISPLAY_INFO, None),
        &[],
        &[],
    );
    let resp = gpu.submit(QueueId::Cursor, &info, 24).unwrap();
    assert_eq!(
        commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::Unspec)
    );
    assert!(display.errors().is_empty(), "{:?}", display.errors());
}

/// How the response header echoes the fence is the protocol crate's
/// (`Response::header_for`); what the daemon adds is that each of its
/// answers is built from the request's own header: the device's answer, a
/// device error, and the daemon's answer to a request it cannot decode.
#[test]
fn every_answer_echoes_the_requests_fence() {
    let d = Daemon::spawn("fences", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    // `fenced` checks that the response echoes the fence and ring_idx.
    gpu.fenced(Fence::on_ring(1, 0, 3))
        .resource_create_2d(1, FMT, 16, 16)
        .unwrap();
    assert_eq!(
        code(gpu.fenced(Fence::on_ring(2, 0, 1)).detach_backing(99)),
        ErrorCode::InvalidResourceId
    );
    let (hdr, _) = gpu
        .fenced(Fence::on_ring(3, 2, 7))
        .raw(0x0999, &[], &[], 24)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    assert_eq!(
        (hdr.flags, hdr.fence_id, hdr.ctx_id, hdr.ring_idx),
        (flags::FENCE | flags::INFO_RING_IDX, 3, 2, 7)
    );
}

#[test]
fn three_d_commands_get_clean_errors() {
    let mut d = Daemon::spawn("3d", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let acked = ctl.status().unwrap().acked();
    assert_eq!(acked & (1 << features::VIRTIO_GPU_F_VIRGL), 0);
    assert_eq!(acked & (1 << features::VIRTIO_GPU_F_CONTEXT_INIT), 0);

    for mem in [blob_mem::HOST3D, blob_mem::HOST3D_GUEST] {
        assert_eq!(
            code(gpu.resource_create_blob(1, mem, 1, 4096, &[])),
            ErrorCode::InvalidParameter
        );
    }
    // A guest blob in a context that does not exist.
    let (hdr, _) = gpu
        .fenced(Fence::new(1))
        .raw(
            ctrl_type::RESOURCE_CREATE_BLOB,
            gpuswap_protocol::wire::ResourceCreateBlob {
                resource_id: 2,
                blob_mem: blob_mem::GUEST,
                size: 4096,
                ..Default::default()
            }
            .as_slice(),
            &[],
            24,
        )
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_OK_NODATA);
    let mut with_ctx = commands::request_header(ctrl_type::RESOURCE_CREATE_BLOB, None);
    with_ctx.ctx_id = 4;
    let req = commands::encode_request(
        &with_ctx,
        gpuswap_protocol::wire::ResourceCreateBlob {
            resource_id: 3,
            blob_mem: blob_mem::GUEST,
            size: 4096,
            ..Default::default()
        }
        .as_slice(),
        &[],
    );
    let resp = gpu.submit(QueueId::Control, &req, 24).unwrap();
    assert_eq!(
        commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidContextId)
    );

    let map = ResourceMapBlob {
        resource_id: 2,
        padding: 0,
        offset: 0,
    };
    let (hdr, _) = gpu
        .cmd()
        .raw(ctrl_type::RESOURCE_MAP_BLOB, map.as_slice(), &[], 32)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    let (hdr, _) = gpu
        .cmd()
        .raw(
            ctrl_type::RESOURCE_UNMAP_BLOB,
            &[2, 0, 0, 0, 0, 0, 0, 0],
            &[],
            24,
        )
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    for type_ in [
        ctrl_type::CTX_CREATE,
        ctrl_type::CTX_DESTROY,
        ctrl_type::CTX_ATTACH_RESOURCE,
        ctrl_type::CTX_DETACH_RESOURCE,
        ctrl_type::RESOURCE_CREATE_3D,
        ctrl_type::TRANSFER_TO_HOST_3D,
        ctrl_type::TRANSFER_FROM_HOST_3D,
        ctrl_type::SUBMIT_3D,
    ] {
        // A plausible body: context name, command stream, whatever.
        let (hdr, _) = gpu
            .fenced(Fence::new(u64::from(type_)))
            .raw(type_, &[0x5a; 72], &[], 24)
            .unwrap();
        assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC, "type {type_:#x}");
    }
    d.assert_alive();
    gpu.get_display_info().unwrap();
    let ids: Vec<_> = ctl.resources().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [2]);
    let errors = ctl.counters().unwrap().counters.errors;
    assert_eq!(errors["submit_3d"], 1);
    assert_eq!(errors["resource_map_blob"], 1);
}

#[test]
fn one_resource_split_over_two_scanouts() {
    let d = Daemon::spawn("twoscan", &["--scanout", "64x48", "--scanout", "64x48"]);
    let mode = ScanoutMode {
        width: 64,
        height: 48,
        enabled: true,
    };
    let mut gpu = d.connect(FrontendConfig {
        display: Some(DisplayConfig {
            scanouts: vec![mode, mode],
            ..Default::default()
        }),
        ..Default::default()
    });
    let display = gpu.display().unwrap().clone();
    let mut ctl = d.ctl();
    assert_eq!(gpu.gpu_config().unwrap().num_scanouts, 2);
    let (w, h) = (128u32, 48u32);
    let stride = (w * 4) as usize;
    let pix = pattern(stride * h as usize, 51);
    upload_2d(&mut gpu, 1, (w, h), &pix);
    let left = rect(0, 0, 64, 48);
    let right = rect(64, 0, 64, 48);
    gpu.set_scanout(0, 1, left).unwrap();
    gpu.set_scanout(1, 1, right).unwrap();
    assert_eq!(ctl.live(1).scanouts, [0, 1]);

    let mark = display.event_count();
    gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
    for (scanout, shown) in [(0u32, left), (1, right)] {
        match wait_display(
            &display,
            mark,
            "UPDATE",
            |e| matches!(e, DisplayEvent::Update { scanout_id, .. } if *scanout_id == scanout),
        ) {
            DisplayEvent::Update {
                x,
                y,
                width,
                height,
                data,
                ..
            } => {
                assert_eq!((x, y, width, height), (0, 0, 64, 48), "scanout {scanout}");
                assert!(
                    data == sub_image(&pix, stride, 0, shown),
                    "scanout {scanout} pixels"
                );
            }
            _ => unreachable!(),
        }
    }
    // A flush inside the right half reaches only scanout 1, in its
    // coordinates.
    let mark = display.event_count();
    gpu.resource_flush(1, rect(70, 10, 8, 4)).unwrap();
    let (r, data) = next_update(&display, mark);
    assert_eq!(r, rect(6, 10, 8, 4));
    assert!(data == sub_image(&pix, stride, 0, rect(70, 10, 8, 4)));
    let updates: Vec<_> = display.events()[mark..]
        .iter()
        .filter(|e| matches!(e, DisplayEvent::Update { .. }))
        .cloned()
        .collect();
    assert!(matches!(
        updates[..],
        [DisplayEvent::Update { scanout_id: 1, .. }]
    ));
    // Unref takes the resource off both.
    let mark = display.event_count();
    gpu.resource_unref(1).unwrap();
    for scanout in [0u32, 1] {
        wait_display(&display, mark, "SCANOUT off", |e| {
            *e == DisplayEvent::Scanout {
                scanout_id: scanout,
                width: 0,
                height: 0,
            }
        });
    }
}
