//! The frontend against QEMU's reference C backend
//! (`/usr/lib/qemu/vhost-user-gpu`): every test spawns its own backend on
//! a fresh socket and skips, loudly, only if the binary is missing.

mod common;

use std::time::Duration;

use gpuswap_frontend::display_server::protocol_features;
use gpuswap_frontend::frontend::VIRTIO_F_VERSION_1;
use gpuswap_frontend::{
    commands, DisplayEvent, Error, Fence, FrontendConfig, GpuFrontend, Pages, Placement, QueueId,
    RawDesc, RegionSpec,
};
use gpuswap_protocol::wire::{CtrlHeader, CursorPos, MemEntry, Rect, ResourceAttachBacking};
use gpuswap_protocol::{ctrl_type, features, format, ErrorCode};
use gpuswap_testkit::pattern;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::ByteValued;

const HIGH: u64 = 1 << 32;
const WAIT: Duration = Duration::from_secs(5);

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn connect(b: &common::CBackend, config: FrontendConfig) -> GpuFrontend {
    GpuFrontend::connect(&b.socket, config)
        .unwrap_or_else(|e| panic!("connect: {e}\nbackend log:\n{}", b.log()))
}

/// Pages for a `bytes`-sized backing, half scattered in the low region and
/// half in the high one.
fn split_backing(gpu: &mut GpuFrontend, bytes: usize) -> Pages {
    let n = bytes.div_ceil(4096);
    let low = gpu
        .ram_mut()
        .alloc_in(0, n / 2, Placement::Scattered)
        .unwrap();
    let high = gpu
        .ram_mut()
        .alloc_in(HIGH, n - n / 2, Placement::Scattered)
        .unwrap();
    Pages::from_addrs(low.addrs().iter().chain(high.addrs()).copied().collect())
}

/// Waits for the next UPDATE after event index `mark`.
fn next_update(gpu: &GpuFrontend, mark: usize) -> (u32, u32, u32, u32, Vec<u8>) {
    match gpu
        .display()
        .unwrap()
        .wait_for(mark, WAIT, |e| matches!(e, DisplayEvent::Update { .. }))
    {
        Some(DisplayEvent::Update {
            x,
            y,
            width,
            height,
            data,
            ..
        }) => (x, y, width, height, data),
        other => panic!("no UPDATE on the display channel: {other:?}"),
    }
}

#[test]
fn end_to_end_2d_transfer_reaches_the_display() {
    let Some(mut backend) = common::spawn_c_backend("end_to_end") else {
        return;
    };
    let mut gpu = connect(
        &backend,
        FrontendConfig::default().with_high_region(64 << 20),
    );

    // Negotiation.
    let n = gpu.negotiated().clone();
    assert_ne!(n.acked_features & VIRTIO_F_VERSION_1, 0);
    assert!(n.has_gpu_feature(features::VIRTIO_GPU_F_EDID));
    assert!(!n.has_gpu_feature(features::VIRTIO_GPU_F_VIRGL));
    assert!(n.has_protocol(VhostUserProtocolFeatures::CONFIG));
    assert!(n.has_protocol(VhostUserProtocolFeatures::REPLY_ACK));
    assert_eq!(n.queue_num, Some(2));
    let cfg = gpu.read_config().unwrap();
    assert_eq!(Some(cfg), gpu.gpu_config());
    assert_eq!(cfg.events_read, 0);
    let display = gpu.display().unwrap().clone();
    assert_eq!(
        display.wait_protocol_features(WAIT),
        Some(protocol_features::EDID | protocol_features::DMABUF2)
    );

    // Display info and EDID come from our display channel.
    let pmodes = gpu.get_display_info().unwrap();
    assert_eq!(
        (pmodes[0].r.width, pmodes[0].r.height, pmodes[0].enabled),
        (1280, 800, 1)
    );
    assert_eq!(pmodes[1].enabled, 0);
    let edid = gpu.get_edid(0).unwrap();
    assert_eq!(edid.len(), 128);
    assert_eq!(&edid[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);

    // A 2D resource backed by scattered pages in two memory regions.
    let (w, h) = (100u32, 60u32);
    let size = (w * h * 4) as usize;
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, w, h)
        .unwrap();
    let pages = split_backing(&mut gpu, size);
    let entries = pages.entries();
    assert_eq!(entries.len(), pages.len(), "scattered pages must not merge");
    let pix = pattern(size, 1);
    gpu.ram().write_entries(&entries, 0, &pix).unwrap();
    gpu.attach_backing(1, &entries).unwrap();
    gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();

    let mark = display.event_count();
    gpu.set_scanout(0, 1, rect(0, 0, w, h)).unwrap();
    assert!(display
        .wait_for(mark, WAIT, |e| *e
            == DisplayEvent::Scanout {
                scanout_id: 0,
                width: w,
                height: h
            })
        .is_some());
    let mark = display.event_count();
    gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
    let (x, y, uw, uh, data) = next_update(&gpu, mark);
    assert_eq!((x, y, uw, uh), (0, 0, w, h));
    assert!(
        data == pix,
        "UPDATE pixels differ from what the guest wrote"
    );
    assert!(display.framebuffer(0).unwrap().data == pix);

    // A sub-rectangle transfer with an offset (the strided path).
    let pix2 = pattern(size, 2);
    gpu.ram().write_entries(&entries, 0, &pix2).unwrap();
    let (sx, sy, sw, sh) = (10u32, 5u32, 20u32, 10u32);
    let offset = u64::from((sy * w + sx) * 4);
    gpu.transfer_to_host_2d(1, rect(sx, sy, sw, sh), offset)
        .unwrap();
    let mark = display.event_count();
    gpu.resource_flush(1, rect(sx, sy, sw, sh)).unwrap();
    let (x, y, uw, uh, data) = next_update(&gpu, mark);
    assert_eq!((x, y, uw, uh), (sx, sy, sw, sh));
    let mut expect_fb = pix.clone();
    let mut expect_sub = Vec::new();
    for row in sy..sy + sh {
        let a = ((row * w + sx) * 4) as usize;
        let b = a + (sw * 4) as usize;
        expect_sub.extend_from_slice(&pix2[a..b]);
        expect_fb[a..b].copy_from_slice(&pix2[a..b]);
    }
    assert!(data == expect_sub);
    assert!(display.framebuffer(0).unwrap().data == expect_fb);

    // Detach: transfers fail, a second detach fails.
    gpu.detach_backing(1).unwrap();
    assert_eq!(
        gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidResourceId)
    );
    assert!(gpu.detach_backing(1).unwrap_err().device_error().is_some());

    // Re-attach *different* pages and check the new content arrives.
    let pages2 = split_backing(&mut gpu, size);
    assert!(pages2.addrs().iter().all(|a| !pages.addrs().contains(a)));
    gpu.ram_mut().free(&pages);
    let entries2 = pages2.page_entries();
    let pix3 = pattern(size, 3);
    gpu.ram().write_entries(&entries2, 0, &pix3).unwrap();
    gpu.attach_backing(1, &entries2).unwrap();
    assert_eq!(
        gpu.attach_backing(1, &entries2).unwrap_err().device_error(),
        Some(ErrorCode::Unspec),
        "double attach"
    );
    gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();
    let mark = display.event_count();
    gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
    assert!(next_update(&gpu, mark).4 == pix3);

    // Detach and unref; unref of the scanout's resource disables it.
    gpu.detach_backing(1).unwrap();
    let mark = display.event_count();
    gpu.resource_unref(1).unwrap();
    assert!(display
        .wait_for(mark, WAIT, |e| matches!(
            e,
            DisplayEvent::Scanout { width: 0, .. }
        ))
        .is_some());
    assert_eq!(
        gpu.resource_unref(1).unwrap_err().device_error(),
        Some(ErrorCode::InvalidResourceId)
    );
    gpu.ram_mut().free(&pages2);

    // Bad requests get error responses.
    assert_eq!(
        gpu.resource_create_2d(0, format::B8G8R8A8_UNORM, 4, 4)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidResourceId)
    );
    assert_eq!(
        gpu.resource_create_2d(2, 999, 4, 4)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        gpu.set_scanout(99, 0, rect(0, 0, 1, 1))
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidScanoutId)
    );
    let (hdr, _) = gpu.cmd().raw(0x0999, &[], &[], 24).unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    assert!(display.errors().is_empty(), "{:?}", display.errors());

    // Reset: the rings stop where we left them and start again from 0.
    let published = gpu.avail_index(QueueId::Control);
    let bases = gpu.stop().unwrap();
    assert_eq!(bases, [u32::from(published), 0]);
    assert!(matches!(gpu.get_display_info(), Err(Error::Stopped)));
    gpu.start().unwrap();
    assert_eq!(gpu.avail_index(QueueId::Control), 0);
    gpu.resource_create_2d(3, format::B8G8R8A8_UNORM, 8, 8)
        .unwrap();
    gpu.reset().unwrap();
    gpu.resource_unref(3).unwrap();
    assert_eq!(gpu.get_display_info().unwrap()[0].r.width, 1280);

    // Disconnect: the C backend serves a single connection and exits.
    drop(gpu);
    let status = backend
        .wait_exit(WAIT)
        .expect("backend did not exit after disconnect");
    assert!(status.success(), "{status:?}\n{}", backend.log());

    // Reconnect: a new backend on a new socket takes a new frontend.
    let Some(backend2) = common::spawn_c_backend("end_to_end_again") else {
        return;
    };
    let mut gpu = connect(&backend2, FrontendConfig::default());
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 8, 8)
        .unwrap();
    assert_eq!(gpu.get_display_info().unwrap()[0].r.height, 800);
}

/// The fence the frontend encodes is the one an independent backend
/// echoes, and the frontend's check catches a backend that does not echo
/// ring_idx. (How a backend builds the echo is tested in the protocol
/// crate, what the daemon adds in its `commands` tests.)
#[test]
fn fences_are_echoed_and_checked() {
    let Some(backend) = common::spawn_c_backend("fences") else {
        return;
    };
    let mut gpu = connect(&backend, FrontendConfig::default());
    gpu.fenced(Fence::new(1))
        .resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16)
        .unwrap();
    // The C backend has no CONTEXT_INIT and does not echo ring_idx: the
    // check catches that.
    assert!(matches!(
        gpu.fenced(Fence::on_ring(2, 0, 1))
            .resource_flush(1, rect(0, 0, 1, 1)),
        Err(Error::FenceMismatch { .. })
    ));
}

#[test]
fn pipelined_submission() {
    let Some(backend) = common::spawn_c_backend("pipelined") else {
        return;
    };
    let mut gpu = connect(&backend, FrontendConfig::default());
    let create: Vec<Vec<u8>> = (1..=100u32)
        .map(|id| {
            let body = gpuswap_protocol::wire::ResourceCreate2d {
                resource_id: id,
                format: format::B8G8R8A8_UNORM,
                width: 8,
                height: 8,
            };
            commands::encode_request(
                &commands::request_header(
                    ctrl_type::RESOURCE_CREATE_2D,
                    Some(Fence::new(u64::from(id))),
                ),
                body.as_slice(),
                &[],
            )
        })
        .collect();
    let done = gpu
        .submit_pipelined(QueueId::Control, create.iter().map(|r| r.as_slice()), 24)
        .unwrap();
    assert_eq!(done.len(), 100);
    for (i, c) in done.iter().enumerate() {
        let hdr = commands::check_response(
            &c.response,
            ctrl_type::RESP_OK_NODATA,
            Some(Fence::new(i as u64 + 1)),
        )
        .unwrap();
        assert_eq!(hdr.fence_id, i as u64 + 1);
        assert_eq!(c.used_len, 24);
    }
    assert_eq!(gpu.in_flight(QueueId::Control), 0);

    // More chains than the ring holds: RingFull, and the ring drains.
    let unref: Vec<Vec<u8>> = (1..=300u32)
        .map(|id| {
            let body = gpuswap_protocol::wire::ResourceId {
                resource_id: id,
                padding: 0,
            };
            commands::encode_request(
                &commands::request_header(ctrl_type::RESOURCE_UNREF, None),
                body.as_slice(),
                &[],
            )
        })
        .collect();
    let err = gpu
        .submit_pipelined(QueueId::Control, unref.iter().map(|r| r.as_slice()), 24)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RingFull {
                queue: QueueId::Control,
                ..
            }
        ),
        "{err}"
    );
    let (mut ok, mut err_count) = (0, 0);
    while gpu.in_flight(QueueId::Control) > 0 {
        let c = gpu.wait(QueueId::Control).unwrap();
        match commands::check_response(&c.response, ctrl_type::RESP_OK_NODATA, None) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.device_error(), Some(ErrorCode::InvalidResourceId));
                err_count += 1;
            }
        }
    }
    // Each 2-descriptor chain takes 2 of the 256 descriptors; ids 1..=100
    // exist.
    assert_eq!((ok, err_count), (100, 28));
    assert!(matches!(
        gpu.wait(QueueId::Control),
        Err(Error::NothingInFlight(_))
    ));
    // Still usable.
    gpu.resource_unref(100).unwrap_err();
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 8, 8)
        .unwrap();
}

#[test]
fn cursor_queue_reaches_the_display() {
    let Some(backend) = common::spawn_c_backend("cursor") else {
        return;
    };
    let mut gpu = connect(&backend, FrontendConfig::default());
    let display = gpu.display().unwrap().clone();
    gpu.resource_create_2d(9, format::B8G8R8A8_UNORM, 64, 64)
        .unwrap();
    let pages = gpu.ram_mut().alloc(4, Placement::Scattered).unwrap();
    let img = pattern(64 * 64 * 4, 9);
    gpu.ram().write_entries(&pages.entries(), 0, &img).unwrap();
    gpu.attach_backing(9, &pages.entries()).unwrap();
    gpu.transfer_to_host_2d(9, rect(0, 0, 64, 64), 0).unwrap();

    let pos = |x, y| CursorPos {
        scanout_id: 0,
        x,
        y,
        padding: 0,
    };
    let mark = display.event_count();
    assert_eq!(gpu.update_cursor(pos(10, 20), 9, 3, 4).unwrap(), 0);
    match display.wait_for(mark, WAIT, |e| {
        matches!(e, DisplayEvent::CursorUpdate { .. })
    }) {
        Some(DisplayEvent::CursorUpdate {
            x,
            y,
            hot_x,
            hot_y,
            data,
            ..
        }) => {
            assert_eq!((x, y, hot_x, hot_y), (10, 20, 3, 4));
            assert!(data == img, "cursor image differs");
        }
        other => panic!("no CURSOR_UPDATE: {other:?}"),
    }
    let mark = display.event_count();
    gpu.move_cursor(pos(30, 40), 9).unwrap();
    assert!(display
        .wait_for(mark, WAIT, |e| *e
            == DisplayEvent::CursorPos {
                scanout_id: 0,
                x: 30,
                y: 40
            })
        .is_some());
    let mark = display.event_count();
    gpu.fenced(Fence::new(1)).move_cursor(pos(1, 2), 0).unwrap();
    assert!(display
        .wait_for(mark, WAIT, |e| matches!(
            e,
            DisplayEvent::CursorPosHide { x: 1, y: 2, .. }
        ))
        .is_some());
}

#[test]
fn hostile_chains_and_backing_limits() {
    // Two adjacent regions, so one entry can span both.
    let Some(mut backend) = common::spawn_c_backend("hostile") else {
        return;
    };
    let config = FrontendConfig {
        regions: vec![
            RegionSpec::new(0, 64 << 20),
            RegionSpec::new(64 << 20, 64 << 20),
        ],
        ..Default::default()
    };
    let mut gpu = connect(&backend, config);
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16)
        .unwrap();
    let buf = gpu.ram_mut().alloc(2, Placement::Contiguous).unwrap();
    let (req, resp) = (buf.addrs()[0], buf.addrs()[1]);
    let unref_bogus = {
        let mut v = CtrlHeader {
            type_: ctrl_type::RESOURCE_UNREF,
            ..Default::default()
        }
        .as_slice()
        .to_vec();
        v.extend_from_slice(&[99, 0, 0, 0, 0, 0, 0, 0]);
        v
    };
    gpu.ram().write(req, &unref_bogus).unwrap();
    let resp_type = |gpu: &GpuFrontend| {
        let mut b = [0u8; 4];
        gpu.ram().read(resp, &mut b).unwrap();
        u32::from_le_bytes(b)
    };

    // Response buffer smaller than a header: truncated, used length 8.
    gpu.ram().fill(resp, 64, 0).unwrap();
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[RawDesc::readable(req, 32), RawDesc::writable(resp, 8)],
        )
        .unwrap();
    assert_eq!(used, 8);
    assert_eq!(resp_type(&gpu), ctrl_type::RESP_ERR_INVALID_RESOURCE_ID);
    // Response buffer split over two descriptors.
    gpu.ram().fill(resp, 64, 0).unwrap();
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[
                RawDesc::readable(req, 32),
                RawDesc::writable(resp, 4),
                RawDesc::writable(resp + 4, 60),
            ],
        )
        .unwrap();
    assert_eq!(
        (used, resp_type(&gpu)),
        (24, ctrl_type::RESP_ERR_INVALID_RESOURCE_ID)
    );
    // Read-only "response" buffer, or none: nothing written.
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[RawDesc::readable(req, 32), RawDesc::readable(resp, 24)],
        )
        .unwrap();
    assert_eq!(used, 0);
    assert_eq!(
        gpu.submit_raw(QueueId::Control, &[RawDesc::readable(req, 32)])
            .unwrap(),
        0
    );
    // Request shorter than a header: the C backend only warns and goes on
    // with the rest of its header uninitialised, so only check that a
    // response came back.
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[RawDesc::readable(req, 8), RawDesc::writable(resp, 24)],
        )
        .unwrap();
    assert_eq!(used, 24);

    // nr_entries larger than the entries present.
    let page = gpu
        .ram_mut()
        .alloc(1, Placement::Contiguous)
        .unwrap()
        .entries()[0];
    let body = ResourceAttachBacking {
        resource_id: 1,
        nr_entries: 3,
    };
    let (hdr, _) = gpu
        .cmd()
        .raw(
            ctrl_type::RESOURCE_ATTACH_BACKING,
            body.as_slice(),
            page.as_slice(),
            24,
        )
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    // The C backend's entry limit is 16384.
    gpu.attach_backing(1, &vec![page; 16384]).unwrap();
    gpu.detach_backing(1).unwrap();
    assert_eq!(
        gpu.attach_backing(1, &vec![page; 16385])
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::Unspec)
    );
    // An entry spanning two adjacent regions, and one outside guest RAM:
    // the C backend refuses both (it needs each entry in one region).
    let span = MemEntry {
        addr: (64 << 20) - 4096,
        length: 8192,
        padding: 0,
    };
    assert!(gpu.ram().write_entries(&[span], 0, &[1u8; 8192]).is_ok());
    assert_eq!(
        gpu.attach_backing(1, &[span]).unwrap_err().device_error(),
        Some(ErrorCode::Unspec)
    );
    let outside = MemEntry {
        addr: 1 << 40,
        length: 4096,
        padding: 0,
    };
    assert_eq!(
        gpu.attach_backing(1, &[outside])
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::Unspec)
    );
    // Still healthy.
    gpu.attach_backing(1, &[page]).unwrap();
    gpu.detach_backing(1).unwrap();

    // A descriptor outside guest RAM: libvhost-user panics and the C
    // backend exits; the frontend reports the disconnect, no panic here.
    let err = gpu
        .submit_raw(
            QueueId::Control,
            &[RawDesc::readable(1 << 40, 24), RawDesc::writable(resp, 24)],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let status = backend.wait_exit(WAIT).expect("backend still running");
    assert!(!status.success());
    assert!(
        backend.log().contains("invalid address"),
        "{}",
        backend.log()
    );
}

fn run_region_changes(use_mem_slots: bool) {
    let name = if use_mem_slots {
        "regions_slots"
    } else {
        "regions_table"
    };
    let Some(backend) = common::spawn_c_backend(name) else {
        return;
    };
    let config = FrontendConfig {
        use_mem_slots,
        ..Default::default()
    };
    let mut gpu = connect(&backend, config);
    assert_eq!(
        gpu.negotiated()
            .has_protocol(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
        use_mem_slots
    );
    let display = gpu.display().unwrap().clone();
    let (w, h) = (32u32, 32u32);
    let size = (w * h * 4) as usize;
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, w, h)
        .unwrap();
    gpu.set_scanout(0, 1, rect(0, 0, w, h)).unwrap();

    for (round, gpa) in [(1u64, HIGH), (2, 2 * HIGH)] {
        gpu.add_region(RegionSpec::new(gpa, 16 << 20)).unwrap();
        let pages = gpu
            .ram_mut()
            .alloc_in(gpa, size / 4096, Placement::Scattered)
            .unwrap();
        let pix = pattern(size, round);
        gpu.ram().write_entries(&pages.entries(), 0, &pix).unwrap();
        gpu.attach_backing(1, &pages.entries()).unwrap();
        gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();
        let mark = display.event_count();
        gpu.resource_flush(1, rect(0, 0, w, h)).unwrap();
        assert!(next_update(&gpu, mark).4 == pix, "round {round}");
        gpu.detach_backing(1).unwrap();
        gpu.remove_region(gpa).unwrap();
        // The backend forgot the region.
        assert_eq!(
            gpu.attach_backing(1, &pages.entries())
                .unwrap_err()
                .device_error(),
            Some(ErrorCode::Unspec)
        );
    }
    assert!(gpu.remove_region(0).is_err(), "the ring region stays");
    gpu.set_mem_table().unwrap();
    gpu.resource_unref(1).unwrap();
}

#[test]
fn memory_regions_come_and_go_with_mem_slots() {
    run_region_changes(true);
}

#[test]
fn memory_regions_come_and_go_with_set_mem_table() {
    run_region_changes(false);
}

#[test]
fn headless_c_backend_cannot_answer_display_info() {
    let Some(backend) = common::spawn_c_backend("headless") else {
        return;
    };
    let mut gpu = connect(&backend, FrontendConfig::default().headless());
    assert!(gpu.display().is_none());
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16)
        .unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Contiguous).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    gpu.transfer_to_host_2d(1, rect(0, 0, 16, 16), 0).unwrap();
    gpu.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap();
    gpu.resource_flush(1, rect(0, 0, 16, 16)).unwrap();
    // GET_DISPLAY_INFO waits for a display that is not there, and the
    // control queue stays blocked behind it.
    gpu.set_timeout(Duration::from_millis(500));
    assert!(matches!(gpu.get_display_info(), Err(Error::Timeout { .. })));
    assert!(matches!(gpu.resource_unref(1), Err(Error::Timeout { .. })));
}

#[test]
fn frontend_is_send() {
    fn is_send<T: Send>() {}
    is_send::<GpuFrontend>();
    is_send::<gpuswap_frontend::DisplayHandle>();
}
