//! Every class of bad guest input over the real socket: each gets an error
//! response or a dropped (empty) chain, the daemon process stays alive and
//! answers a valid request right after.

mod common;

use common::*;
use gpuswap_api::control::Backing;
use gpuswap_device::{ENTRY_OVERHEAD, RESOURCE_OVERHEAD};
use gpuswap_frontend::ring::DESC_F_INDIRECT;
use gpuswap_frontend::{commands, FrontendConfig, GpuFrontend, Placement, QueueId, RawDesc};
use gpuswap_protocol::wire::{
    CtrlHeader, MemEntry, ResourceAttachBacking, ResourceCreateBlob, ResourceId, SetScanoutBlob,
};
use gpuswap_protocol::{blob_mem, ctrl_type, format, ErrorCode};
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;
/// Guest RAM ends here (one 64 MiB region).
const RAM_END: u64 = 64 << 20;

fn small_ram() -> FrontendConfig {
    FrontendConfig {
        regions: vec![gpuswap_frontend::RegionSpec::new(0, RAM_END)],
        ..FrontendConfig::default().headless()
    }
}

/// The daemon is alive and answers a valid request.
fn still_serving(d: &mut Daemon, gpu: &mut GpuFrontend, what: &str) {
    d.assert_alive();
    if let Err(e) = gpu.get_display_info() {
        panic!("after {what}: GET_DISPLAY_INFO failed: {e}\n{}", d.log());
    }
}

fn header(type_: u32) -> Vec<u8> {
    CtrlHeader {
        type_,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

fn attach_request(id: u32, nr_entries: u32, entries: &[MemEntry]) -> (Vec<u8>, Vec<u8>) {
    let body = ResourceAttachBacking {
        resource_id: id,
        nr_entries,
    };
    (body.as_slice().to_vec(), commands::encode_entries(entries))
}

/// A request page and a response page for raw chains.
struct Buffers {
    req: u64,
    resp: u64,
}

impl Buffers {
    fn new(gpu: &mut GpuFrontend) -> Buffers {
        let p = gpu.ram_mut().alloc(2, Placement::Contiguous).unwrap();
        Buffers {
            req: p.addrs()[0],
            resp: p.addrs()[1],
        }
    }

    /// Writes `request` and clears the response page.
    fn load(&self, gpu: &GpuFrontend, request: &[u8]) {
        gpu.ram().write(self.req, request).unwrap();
        gpu.ram().fill(self.resp, 4096, 0).unwrap();
    }

    /// Submits the first `len` loaded bytes as a request with a 24-byte
    /// response buffer; the length the backend reports it wrote.
    fn submit(&self, gpu: &mut GpuFrontend, len: u32) -> u32 {
        gpu.submit_raw(
            QueueId::Control,
            &[
                RawDesc::readable(self.req, len),
                RawDesc::writable(self.resp, 24),
            ],
        )
        .unwrap()
    }

    fn resp_type(&self, gpu: &GpuFrontend) -> u32 {
        let mut b = [0u8; 4];
        gpu.ram().read(self.resp, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

#[test]
fn malformed_requests_get_error_responses() {
    let mut d = Daemon::spawn("malformed", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    let m0 = ctl.counters().unwrap().counters.malformed;
    let buf = Buffers::new(&mut gpu);

    // Shorter than a header: ERR_UNSPEC with a zeroed header.
    buf.load(&gpu, &header(ctrl_type::RESOURCE_UNREF)[..8]);
    let used = buf.submit(&mut gpu, 8);
    assert_eq!(
        (used, buf.resp_type(&gpu)),
        (24, ctrl_type::RESP_ERR_UNSPEC)
    );
    still_serving(&mut d, &mut gpu, "short header");

    // No readable part at all: an empty request.
    let used = gpu
        .submit_raw(QueueId::Control, &[RawDesc::writable(buf.resp, 24)])
        .unwrap();
    assert_eq!(
        (used, buf.resp_type(&gpu)),
        (24, ctrl_type::RESP_ERR_UNSPEC)
    );

    // Short bodies, and entries promised but missing.
    for (type_, body, trailer) in [
        (ctrl_type::TRANSFER_TO_HOST_2D, vec![0u8; 31], vec![]),
        (ctrl_type::RESOURCE_CREATE_2D, vec![1, 0, 0, 0], vec![]),
        (ctrl_type::RESOURCE_UNREF, vec![], vec![]),
        (ctrl_type::SET_SCANOUT_BLOB, vec![0u8; 40], vec![]),
        (ctrl_type::RESOURCE_CREATE_BLOB, vec![0u8; 31], vec![]),
        {
            let (b, t) = attach_request(1, 3, &[MemEntry::default()]);
            (ctrl_type::RESOURCE_ATTACH_BACKING, b, t)
        },
    ] {
        let (hdr, _) = gpu.cmd().raw(type_, &body, &trailer, 24).unwrap();
        assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC, "short {type_:#x}");
    }
    still_serving(&mut d, &mut gpu, "short bodies");

    // Unknown types, on both queues.
    for type_ in [0, 0x0999, 0x1100, 0x0302, u32::MAX] {
        let (hdr, _) = gpu.cmd().raw(type_, &[0u8; 64], &[], 24).unwrap();
        assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC, "type {type_:#x}");
    }
    let resp = gpu.submit(QueueId::Cursor, &header(0x0abc), 24).unwrap();
    assert_eq!(
        commands::check_fence(&resp, None).unwrap().type_,
        ctrl_type::RESP_ERR_UNSPEC
    );
    // A cursor request on the control queue, a short one on the cursor queue.
    let (hdr, _) = gpu
        .cmd()
        .raw(ctrl_type::MOVE_CURSOR, &[0u8; 24], &[], 24)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_UNSPEC);
    let mut short_cursor = header(ctrl_type::MOVE_CURSOR);
    short_cursor.extend_from_slice(&[0; 10]);
    let resp = gpu.submit(QueueId::Cursor, &short_cursor, 24).unwrap();
    assert_eq!(
        commands::check_fence(&resp, None).unwrap().type_,
        ctrl_type::RESP_ERR_UNSPEC
    );
    still_serving(&mut d, &mut gpu, "unknown types");

    // 6 short + 1 empty + 6 short bodies + 5 unknown + 1 unknown cursor +
    // 2 on the wrong queue or short: every one counted as malformed.
    let m1 = ctl.counters().unwrap().counters.malformed;
    assert_eq!(m1 - m0, 1 + 1 + 6 + 5 + 1 + 2);
}

#[test]
fn entry_counts_are_bounded() {
    let mut d = Daemon::spawn("entries", &["--max-entries", "64"]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    assert_eq!(ctl.status().unwrap().max_entries, 64);
    gpu.resource_create_2d(1, FMT, 64, 64).unwrap();
    let page = gpu.ram_mut().alloc(64, Placement::Scattered).unwrap();
    let entries = page.page_entries();

    // u32::MAX, with nothing behind it.
    let (b, t) = attach_request(1, u32::MAX, &[]);
    let (hdr, _) = gpu
        .cmd()
        .raw(ctrl_type::RESOURCE_ATTACH_BACKING, &b, &t, 24)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_INVALID_PARAMETER);
    let blob = ResourceCreateBlob {
        resource_id: 2,
        blob_mem: blob_mem::GUEST,
        nr_entries: u32::MAX,
        size: 4096,
        ..Default::default()
    };
    let (hdr, _) = gpu
        .cmd()
        .raw(ctrl_type::RESOURCE_CREATE_BLOB, blob.as_slice(), &[], 24)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_INVALID_PARAMETER);
    still_serving(&mut d, &mut gpu, "nr_entries u32::MAX");

    // max_entries + 1, with the entries present, and with far more bytes
    // than any valid request.
    let mut too_many = entries.clone();
    too_many.push(entries[0]);
    assert_eq!(
        code(gpu.attach_backing(1, &too_many)),
        ErrorCode::InvalidParameter
    );
    assert_eq!(
        code(gpu.resource_create_blob(2, blob_mem::GUEST, 0, 4096, &too_many)),
        ErrorCode::InvalidParameter
    );
    let (b, t) = attach_request(1, 65, &vec![entries[0]; 4096]);
    let (hdr, _) = gpu
        .cmd()
        .raw(ctrl_type::RESOURCE_ATTACH_BACKING, &b, &t, 24)
        .unwrap();
    assert_eq!(hdr.type_, ctrl_type::RESP_ERR_INVALID_PARAMETER);
    assert_eq!(ctl.live(1).generation, 0);
    assert!(ctl.resource(2).unwrap().is_none());
    still_serving(&mut d, &mut gpu, "max_entries + 1");

    // Exactly max_entries is fine.
    gpu.attach_backing(1, &entries).unwrap();
    assert_eq!(ctl.live(1).entries, 64);
}

#[test]
fn sizes_and_ids_are_checked() {
    let mut d = Daemon::spawn("sizes", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    // width * height * 4 overflowing 32 and 64 bits, zero sizes, bad format.
    for (w, h, want) in [
        (u32::MAX, u32::MAX, ErrorCode::InvalidParameter),
        (0x4000_0000, 1, ErrorCode::InvalidParameter),
        (0, 16, ErrorCode::InvalidParameter),
        (16, 0, ErrorCode::InvalidParameter),
        // Fits the arithmetic, not the 2 GiB host-memory budget.
        (65535, 65535, ErrorCode::OutOfMemory),
    ] {
        assert_eq!(code(gpu.resource_create_2d(1, FMT, w, h)), want, "{w}x{h}");
    }
    assert_eq!(
        code(gpu.resource_create_2d(1, 999, 4, 4)),
        ErrorCode::InvalidParameter
    );
    assert_eq!(
        code(gpu.resource_create_blob(1, blob_mem::GUEST, 0, 0, &[])),
        ErrorCode::InvalidParameter
    );
    // Id 0 is reserved; u32::MAX is an ordinary id.
    assert_eq!(
        code(gpu.resource_create_2d(0, FMT, 4, 4)),
        ErrorCode::InvalidResourceId
    );
    assert_eq!(
        code(gpu.resource_create_blob(0, blob_mem::GUEST, 0, 4096, &[])),
        ErrorCode::InvalidResourceId
    );
    for r in [gpu.resource_unref(0), gpu.detach_backing(0)] {
        assert_eq!(code(r), ErrorCode::InvalidResourceId);
    }
    assert_eq!(
        code(gpu.attach_backing(0, &[])),
        ErrorCode::InvalidResourceId
    );
    assert_eq!(ctl.status().unwrap().resources, 0);
    gpu.resource_create_2d(u32::MAX, FMT, 4, 4).unwrap();
    gpu.resource_unref(u32::MAX).unwrap();
    // Scanout ids past the configured one.
    for scanout in [1, 15, 16, u32::MAX] {
        assert_eq!(
            code(gpu.set_scanout(scanout, 0, rect(0, 0, 0, 0))),
            ErrorCode::InvalidScanoutId
        );
        assert_eq!(code(gpu.get_edid(scanout)), ErrorCode::InvalidScanoutId);
    }
    let args = SetScanoutBlob {
        scanout_id: 16,
        ..Default::default()
    };
    assert_eq!(
        code(gpu.set_scanout_blob(&args)),
        ErrorCode::InvalidScanoutId
    );
    // Rects outside the resource.
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    for r in [
        rect(0, 0, 17, 16),
        rect(u32::MAX, 0, 1, 1),
        rect(8, u32::MAX, 1, 2),
    ] {
        assert_eq!(code(gpu.set_scanout(0, 1, r)), ErrorCode::InvalidParameter);
        assert_eq!(code(gpu.resource_flush(1, r)), ErrorCode::InvalidParameter);
    }
    still_serving(&mut d, &mut gpu, "sizes and ids");
    // Resource 1 and its one entry; the refused ones cost nothing.
    assert_eq!(
        ctl.status().unwrap().host_memory_used,
        16 * 16 * 4 + RESOURCE_OVERHEAD + ENTRY_OVERHEAD
    );
}

#[test]
fn entries_outside_guest_ram_are_invalid_parameter() {
    let mut d = Daemon::spawn("outside", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 32, 32).unwrap();
    let good = gpu
        .ram_mut()
        .alloc(1, Placement::Scattered)
        .unwrap()
        .entries()[0];
    let entry = |addr: u64, length: u32| MemEntry {
        addr,
        length,
        padding: 0,
    };
    for (what, entries) in [
        ("far away", vec![entry(1 << 40, 4096)]),
        ("past the end", vec![entry(RAM_END, 4096)]),
        ("crossing the end", vec![entry(RAM_END - 4096, 8192)]),
        (
            "second entry outside",
            vec![good, entry(RAM_END + (1 << 20), 4096)],
        ),
        ("wrapping", vec![entry(u64::MAX - 10, 4096)]),
        ("zero length", vec![good, entry(good.addr + 4096, 0)]),
        ("no entries", vec![]),
    ] {
        assert_eq!(
            code(gpu.attach_backing(1, &entries)),
            ErrorCode::InvalidParameter,
            "{what}"
        );
        // (A blob may be created with no entries: it starts detached.)
        if !entries.is_empty() {
            assert_eq!(
                code(gpu.resource_create_blob(2, blob_mem::GUEST, 0, 4096, &entries)),
                ErrorCode::InvalidParameter,
                "blob, {what}"
            );
        }
    }
    let r = ctl.live(1);
    assert_eq!((r.backing, r.generation), (Backing::Detached, 0));
    let ids: Vec<_> = ctl.resources().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [1], "a refused create_blob left a resource");
    assert_eq!(
        ctl.status().unwrap().host_memory_used,
        32 * 32 * 4 + RESOURCE_OVERHEAD
    );
    still_serving(&mut d, &mut gpu, "entries outside RAM");
    gpu.attach_backing(1, &[good]).unwrap();
}

#[test]
fn response_buffers_read_only_too_small_or_missing() {
    let mut d = Daemon::spawn("respbuf", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    let buf = Buffers::new(&mut gpu);
    let mut unref_99 = header(ctrl_type::RESOURCE_UNREF);
    unref_99.extend_from_slice(
        ResourceId {
            resource_id: 99,
            padding: 0,
        }
        .as_slice(),
    );

    // Read-only "response" buffer: nothing is written, completed empty.
    buf.load(&gpu, &unref_99);
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[
                RawDesc::readable(buf.req, 32),
                RawDesc::readable(buf.resp, 24),
            ],
        )
        .unwrap();
    assert_eq!((used, buf.resp_type(&gpu)), (0, 0));
    // Only readable descriptors.
    let used = gpu
        .submit_raw(QueueId::Control, &[RawDesc::readable(buf.req, 32)])
        .unwrap();
    assert_eq!(used, 0);
    // Smaller than a header: completed empty, nothing written.
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[
                RawDesc::readable(buf.req, 32),
                RawDesc::writable(buf.resp, 8),
            ],
        )
        .unwrap();
    assert_eq!((used, buf.resp_type(&gpu)), (0, 0));
    still_serving(&mut d, &mut gpu, "no room for a response");

    // Room for a header, not for the response: ERR_UNSPEC in the header.
    for (type_, body) in [
        (ctrl_type::GET_DISPLAY_INFO, vec![]),
        (ctrl_type::GET_EDID, vec![0u8; 8]),
    ] {
        let (hdr, resp) = gpu.cmd().raw(type_, &body, &[], 100).unwrap();
        assert_eq!(
            (hdr.type_, resp.len()),
            (ctrl_type::RESP_ERR_UNSPEC, 24),
            "{type_:#x}"
        );
    }
    // A response split over two descriptors is fine.
    let used = gpu
        .submit_raw(
            QueueId::Control,
            &[
                RawDesc::readable(buf.req, 32),
                RawDesc::writable(buf.resp, 4),
                RawDesc::writable(buf.resp + 4, 60),
            ],
        )
        .unwrap();
    assert_eq!(
        (used, buf.resp_type(&gpu)),
        (24, ctrl_type::RESP_ERR_INVALID_RESOURCE_ID)
    );
    // The request ran even though it could not be answered: the unknown
    // id was seen four times (read-only, readable-only, too small, split).
    let unknown = ctl.counters().unwrap().counters.errors["resource_unref"];
    assert_eq!(unknown, 4);
    still_serving(&mut d, &mut gpu, "small response buffers");
}

#[test]
fn descriptors_outside_guest_ram_are_dropped() {
    let mut d = Daemon::spawn("baddesc", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    let buf = Buffers::new(&mut gpu);
    let mut unref_99 = header(ctrl_type::RESOURCE_UNREF);
    unref_99.extend_from_slice(
        ResourceId {
            resource_id: 99,
            padding: 0,
        }
        .as_slice(),
    );
    buf.load(&gpu, &unref_99);
    let m0 = ctl.counters().unwrap().counters.malformed;

    let chains: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "readable far away",
            vec![
                RawDesc::readable(1 << 40, 32),
                RawDesc::writable(buf.resp, 24),
            ],
        ),
        (
            "writable far away",
            vec![
                RawDesc::readable(buf.req, 32),
                RawDesc::writable(1 << 40, 24),
            ],
        ),
        (
            "readable across the end of RAM",
            vec![
                RawDesc::readable(RAM_END - 8, 32),
                RawDesc::writable(buf.resp, 24),
            ],
        ),
        (
            "writable of 4 GiB",
            vec![
                RawDesc::readable(buf.req, 32),
                RawDesc::writable(buf.resp, u32::MAX),
            ],
        ),
        (
            "readable of 4 GiB",
            vec![
                RawDesc::readable(buf.req, u32::MAX),
                RawDesc::writable(buf.resp, 24),
            ],
        ),
        (
            "indirect table outside RAM",
            vec![RawDesc {
                addr: 1 << 40,
                len: 64,
                writable: false,
                extra_flags: DESC_F_INDIRECT,
            }],
        ),
    ];
    for (what, chain) in &chains {
        gpu.ram().fill(buf.resp, 64, 0).unwrap();
        let used = gpu
            .submit_raw(QueueId::Control, chain)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", d.log()));
        assert_eq!(used, 0, "{what}: a dropped chain is completed empty");
        assert_eq!(buf.resp_type(&gpu), 0, "{what}: nothing written");
        still_serving(&mut d, &mut gpu, what);
    }
    // Each is counted as malformed, except the 4 GiB writable one:
    // virtio-queue ends a chain before it passes 2^32 bytes (virtio 1.2,
    // 2.7.5.2), so that request runs, with no room for its response.
    let c = ctl.counters().unwrap().counters;
    assert_eq!(c.malformed - m0, chains.len() as u64 - 1);
    assert_eq!(c.errors["resource_unref"], 1);
    // The cursor queue too.
    let used = gpu
        .submit_raw(QueueId::Cursor, &[RawDesc::readable(1 << 40, 56)])
        .unwrap();
    assert_eq!(used, 0);
    still_serving(&mut d, &mut gpu, "cursor descriptor outside RAM");
}

#[test]
fn host_memory_exhaustion_then_unref_frees() {
    let mut d = Daemon::spawn("oom", &["--max-host-memory", "1M"]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    assert_eq!(ctl.status().unwrap().max_host_memory, 1 << 20);
    // 256x256x4 = 256 KiB each (plus bookkeeping): three fit, four do not.
    for id in 1..=3 {
        gpu.resource_create_2d(id, FMT, 256, 256).unwrap();
    }
    let used = ctl.status().unwrap().host_memory_used;
    assert_eq!(used, 3 * (256 * 256 * 4 + RESOURCE_OVERHEAD));
    assert_eq!(
        code(gpu.resource_create_2d(4, FMT, 256, 256)),
        ErrorCode::OutOfMemory
    );
    assert!(ctl.resource(4).unwrap().is_none());
    assert_eq!(
        ctl.status().unwrap().host_memory_used,
        used,
        "a refused create is not charged"
    );
    assert_eq!(
        code(gpu.resource_create_2d(5, FMT, 1024, 1024)),
        ErrorCode::OutOfMemory
    );
    still_serving(&mut d, &mut gpu, "out of host memory");
    gpu.resource_unref(2).unwrap();
    gpu.resource_create_2d(4, FMT, 256, 256).unwrap();
    assert_eq!(ctl.status().unwrap().host_memory_used, used);
    let errors = ctl.counters().unwrap().counters.errors;
    assert_eq!(errors["resource_create_2d"], 2);
}

/// How a test breaks a ring behind the frontend's back.
#[derive(Clone, Copy, Debug)]
enum RingDamage {
    /// The available index jumps far past the chains the driver made.
    AvailIndexJump,
    /// One available entry names a head outside the queue.
    HeadOutOfRange,
}

fn damage_ring(gpu: &GpuFrontend, queue: QueueId, damage: RingDamage) {
    let layout = gpu.ring_layout(queue);
    let next = gpu.avail_index(queue);
    let idx = match damage {
        RingDamage::AvailIndexJump => next.wrapping_add(layout.size + 7),
        RingDamage::HeadOutOfRange => {
            let slot = u64::from(next % layout.size);
            let head = layout.size + 3;
            gpu.ram()
                .write(layout.avail + 4 + 2 * slot, &head.to_le_bytes())
                .unwrap();
            next.wrapping_add(1)
        }
    };
    gpu.ram()
        .write(layout.avail + 2, &idx.to_le_bytes())
        .unwrap();
}

/// A ring the device can no longer trust is reported once (log line and
/// counter), the connection is dropped so the VMM sees the backend go, and
/// the next frontend is served.
#[test]
fn a_broken_ring_drops_the_connection_and_the_next_frontend_is_served() {
    for (queue, damage) in [
        (QueueId::Control, RingDamage::AvailIndexJump),
        (QueueId::Control, RingDamage::HeadOutOfRange),
        (QueueId::Cursor, RingDamage::AvailIndexJump),
        (QueueId::Cursor, RingDamage::HeadOutOfRange),
    ] {
        let what = format!("{queue:?} {damage:?}");
        let mut d = Daemon::spawn("broken-ring", &[]);
        let mut ctl = d.ctl();
        let mut gpu = d.connect(small_ram());
        still_serving(&mut d, &mut gpu, "connecting");
        gpu.resource_create_2d(1, FMT, 64, 64).unwrap();

        damage_ring(&gpu, queue, damage);
        // Kicked over and over: still one report.
        for _ in 0..5 {
            gpu.kick(queue).unwrap();
        }
        let reported = (0..250).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            ctl.counters().unwrap().ring_errors == 1
        });
        assert!(reported, "{what}: not reported\n{}", d.log());
        let dropped = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            gpu.read_config().is_err()
        });
        assert!(dropped, "{what}: the connection is still up\n{}", d.log());
        // The frontend's resources went with it.
        d.wait_status(&what, |s| s.resources == 0);

        let mut next = d.connect(small_ram());
        still_serving(&mut d, &mut next, &what);
        next.resource_create_2d(1, FMT, 64, 64).unwrap();
        assert_eq!(ctl.counters().unwrap().ring_errors, 1, "{what}");
        let log = d.log();
        assert_eq!(
            log.matches("dropping the frontend connection").count(),
            1,
            "{what}: {log}"
        );
    }
}

/// A guest sending thousands of bad requests gets every one answered and
/// counted, but cannot fill the host's log: each kind of warning is
/// limited to a burst per window.
#[test]
fn a_flood_of_bad_requests_is_counted_exactly_and_logged_sparingly() {
    const FLOOD: usize = 2000;
    let mut d = Daemon::spawn("flood", &[]);
    let mut gpu = d.connect(small_ram());
    let mut ctl = d.ctl();
    let buf = Buffers::new(&mut gpu);
    let short = &header(ctrl_type::RESOURCE_UNREF)[..8];
    buf.load(&gpu, short);
    for _ in 0..FLOOD {
        assert_eq!(
            code(gpu.resource_flush(99, rect(0, 0, 1, 1))),
            ErrorCode::InvalidResourceId
        );
        assert_eq!(buf.submit(&mut gpu, 8), 24);
    }
    still_serving(&mut d, &mut gpu, "the flood");
    let counters = ctl.counters().unwrap().counters;
    assert_eq!(
        counters.errors["resource_flush"], FLOOD as u64,
        "{counters:?}"
    );
    assert_eq!(counters.malformed, FLOOD as u64, "{counters:?}");
    let log = d.log();
    let flush_lines = log
        .lines()
        .filter(|l| l.contains("resource_flush:"))
        .count();
    let malformed_lines = log.lines().filter(|l| l.contains("malformed")).count();
    let limit = gpuswap_device::log_limit::BURST as usize;
    assert!(
        (1..=limit).contains(&flush_lines) && (1..=limit).contains(&malformed_lines),
        "{flush_lines} flush and {malformed_lines} malformed lines for {FLOOD} each"
    );
}
