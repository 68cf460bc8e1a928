//! The four workloads, each driven through [`GpuFrontend`] with requests
//! encoded once up front, so the timed part is the frontend putting a
//! chain on the ring, the backend handling it and the completion coming
//! back.

use std::time::{Duration, Instant};

use gpuswap_frontend::commands::{encode_entries, encode_request, request_header};
use gpuswap_frontend::{
    DisplayEvent, DisplayHandle, GpuFrontend, GuestRam, Pages, Placement, QueueId, RegionSpec,
};
use gpuswap_protocol::wire::{
    CtrlHeader, MemEntry, Rect, ResourceAttachBacking, ResourceCreate2d, ResourceFlush, ResourceId,
    SetScanout, TransferToHost2d,
};
use gpuswap_protocol::{ctrl_type as t, format};
use gpuswap_testkit::pattern;
use serde::{Deserialize, Serialize};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use crate::stats::{measure, CpuProbe, Plan, Stat, Timing};

const PAGE: u64 = 4096;
/// One "huge page" entry of the contiguous layout.
pub const HUGE: u64 = 2 << 20;
/// QEMU's C backend refuses attaches with more entries than this.
pub const C_MAX_ENTRIES: u64 = 16384;
const HDR: usize = std::mem::size_of::<CtrlHeader>();

/// How a backing is laid out in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One entry per 4 KiB page, pages scattered (no two adjacent).
    Scattered4k,
    /// Entries of 2 MiB contiguous guest memory each (one smaller entry
    /// below 2 MiB), not adjacent to each other.
    Contiguous2m,
}

impl Layout {
    /// Both layouts.
    pub const ALL: [Layout; 2] = [Layout::Scattered4k, Layout::Contiguous2m];

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Layout::Scattered4k => "scattered 4 KiB entries",
            Layout::Contiguous2m => "2 MiB contiguous entries",
        }
    }

    /// Entries a backing of `bytes` has in this layout.
    pub fn entries(self, bytes: u64) -> u64 {
        match self {
            Layout::Scattered4k => bytes.div_ceil(PAGE),
            Layout::Contiguous2m => bytes.div_ceil(HUGE),
        }
    }
}

/// What one run measures.
#[derive(Clone, Debug)]
pub struct Workloads {
    /// Guest RAM given to the frontend.
    pub ram_bytes: u64,
    /// Round trips timed per sample.
    pub rt_batch: usize,
    /// Requests per pipelined submission.
    pub pipeline_depth: usize,
    /// Samples for the round-trip figures.
    pub rt_plan: Plan,
    /// Backing sizes for ATTACH + DETACH.
    pub attach_sizes: Vec<u64>,
    /// Samples per ATTACH + DETACH size.
    pub attach_plan: Plan,
    /// Frames for TRANSFER_TO_HOST_2D and memcpy.
    pub frames: Vec<Frame>,
    /// Samples per transfer.
    pub transfer_plan: Plan,
    /// Frames for the evict/restore cycle and the display frames.
    pub evict_frames: Vec<Frame>,
    /// Samples per evict/restore cycle and per display frame.
    pub evict_plan: Plan,
}

/// A frame size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Short name (`1080p`, `4k`).
    pub name: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Frame {
    /// 1920x1080.
    pub const FHD: Frame = Frame {
        name: "1080p",
        width: 1920,
        height: 1080,
    };
    /// 3840x2160.
    pub const UHD: Frame = Frame {
        name: "4k",
        width: 3840,
        height: 2160,
    };

    /// Bytes at 4 bytes per pixel.
    pub fn bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 4
    }

    fn rect(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }
}

/// Workload 1: control-queue round trips.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundTrips {
    /// RESOURCE_FLUSH of an attached, not scanned-out 64x64 resource,
    /// one request in flight at a time.
    pub flush: Timing,
    /// The same request, `pipeline_depth` at a time (one kick, then every
    /// completion); seconds per request.
    pub flush_pipelined: Timing,
    /// Requests per pipelined submission.
    pub pipeline_depth: usize,
    /// RESOURCE_CREATE_2D (64x64) then RESOURCE_UNREF, each waited for;
    /// seconds per pair.
    pub create_unref: Timing,
}

/// Workload 2: one ATTACH + DETACH size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachPoint {
    /// Entry layout.
    pub layout: Layout,
    /// Backing size.
    pub bytes: u64,
    /// Entries in the ATTACH_BACKING request.
    pub entries: u64,
    /// Seconds per ATTACH + DETACH cycle; None when refused.
    pub cycle: Option<Timing>,
    /// Why the backend refused the attach (its error response).
    pub refused: Option<String>,
}

/// Workload 3: one TRANSFER_TO_HOST_2D frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferPoint {
    /// Frame name.
    pub frame: String,
    /// Bytes per transfer.
    pub bytes: u64,
    /// Backing entries (scattered 4 KiB pages).
    pub entries: u64,
    /// Seconds per full-frame transfer (request to completion).
    pub transfer: Timing,
}

/// memcpy of a frame, in this process, for comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemcpyPoint {
    /// Frame name.
    pub frame: String,
    /// Bytes per copy.
    pub bytes: u64,
    /// One `copy_from_slice` between two page-aligned buffers of the
    /// frame's size.
    pub copy: Stat,
    /// The same bytes gathered page by page from scattered 4 KiB pages of
    /// memfd guest RAM (as a backend reads a scattered backing) into one
    /// page-aligned buffer.
    pub gather: Stat,
    /// The gather again, into a buffer starting 16 bytes past a page
    /// boundary: where glibc puts a fresh large allocation (its chunk
    /// header comes first), e.g. a 2D resource's host copy. Every
    /// destination then sits 16 bytes after its source modulo 4 KiB.
    pub gather_offset16: Stat,
}

/// A buffer of `len` bytes starting `offset` bytes past a page boundary.
struct Placed {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Placed {
    fn new(len: usize, offset: usize) -> Placed {
        let buf = vec![1u8; len + offset + PAGE as usize];
        let misalign = buf.as_ptr() as usize % PAGE as usize;
        let start = (PAGE as usize - misalign) % PAGE as usize + offset;
        Placed { buf, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Workload 4: evict/restore of one frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvictPoint {
    /// Frame name.
    pub frame: String,
    /// Frame bytes.
    pub bytes: u64,
    /// Backing entries (scattered 4 KiB pages).
    pub entries: u64,
    /// Whole cycle: DETACH, ATTACH of the other page set, TRANSFER, FLUSH
    /// to the scanout, the display's UPDATE received and hashed; with the
    /// backend's CPU time.
    pub cycle: Timing,
    /// DETACH alone.
    pub evict: Stat,
    /// ATTACH of the other page set.
    pub attach: Stat,
    /// TRANSFER_TO_HOST_2D of the whole frame from the new pages.
    pub transfer: Stat,
    /// FLUSH + UPDATE + hash.
    pub verify: Stat,
    /// Cycles whose UPDATE matched what was written (all of them, or the
    /// run fails).
    pub verified: usize,
}

/// Workload 5: frames shown through a display peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DisplayPoint {
    /// Frame name.
    pub frame: String,
    /// Frame bytes.
    pub bytes: u64,
    /// One frame: TRANSFER_TO_HOST_2D of the whole frame, FLUSH of the
    /// scanout, the display's UPDATE received and hashed; with the
    /// backend's CPU time.
    pub frame_time: Timing,
    /// Frames whose UPDATE matched the guest's pixels (all of them, or
    /// the run fails).
    pub verified: usize,
}

/// Everything measured on one backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendResults {
    /// `gpuswap` or `qemu-c`.
    pub backend: String,
    /// The program run.
    pub binary: String,
    /// Workload 1.
    pub round_trips: RoundTrips,
    /// Workload 2.
    pub attach_detach: Vec<AttachPoint>,
    /// Workload 3.
    pub transfers: Vec<TransferPoint>,
    /// Workload 4.
    pub evict_restore: Vec<EvictPoint>,
    /// Workload 5.
    pub display: Vec<DisplayPoint>,
}

/// Response type of a completed request.
fn response_type(resp: &[u8]) -> Result<u32, String> {
    if resp.len() < HDR {
        return Err(format!("short response of {} bytes", resp.len()));
    }
    Ok(u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]))
}

/// The spec's name of a response type.
pub fn response_name(type_: u32) -> String {
    match type_ {
        t::RESP_OK_NODATA => "OK_NODATA".into(),
        t::RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO".into(),
        t::RESP_ERR_UNSPEC => "ERR_UNSPEC".into(),
        t::RESP_ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY".into(),
        t::RESP_ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID".into(),
        t::RESP_ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID".into(),
        t::RESP_ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID".into(),
        t::RESP_ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER".into(),
        other => format!("response {other:#x}"),
    }
}

/// Submits a pre-encoded request; Ok(response type).
fn call(gpu: &mut GpuFrontend, req: &[u8]) -> Result<u32, String> {
    let resp = gpu
        .submit(QueueId::Control, req, HDR)
        .map_err(|e| format!("submit: {e}"))?;
    response_type(&resp)
}

/// Submits a pre-encoded request that must answer OK_NODATA.
fn ok(gpu: &mut GpuFrontend, req: &[u8], what: &str) -> Result<(), String> {
    match call(gpu, req)? {
        t::RESP_OK_NODATA => Ok(()),
        other => Err(format!("{what}: {}", response_name(other))),
    }
}

fn req(type_: u32, body: &[u8], trailer: &[u8]) -> Vec<u8> {
    encode_request(&request_header(type_, None), body, trailer)
}

fn create_2d(id: u32, width: u32, height: u32) -> Vec<u8> {
    let body = ResourceCreate2d {
        resource_id: id,
        format: format::B8G8R8X8_UNORM,
        width,
        height,
    };
    req(t::RESOURCE_CREATE_2D, body.as_slice(), &[])
}

fn id_req(type_: u32, id: u32) -> Vec<u8> {
    let body = ResourceId {
        resource_id: id,
        padding: 0,
    };
    req(type_, body.as_slice(), &[])
}

fn attach(id: u32, entries: &[MemEntry]) -> Vec<u8> {
    let body = ResourceAttachBacking {
        resource_id: id,
        nr_entries: entries.len() as u32,
    };
    req(
        t::RESOURCE_ATTACH_BACKING,
        body.as_slice(),
        &encode_entries(entries),
    )
}

fn flush(id: u32, r: Rect) -> Vec<u8> {
    let body = ResourceFlush {
        r,
        resource_id: id,
        padding: 0,
    };
    req(t::RESOURCE_FLUSH, body.as_slice(), &[])
}

fn transfer(id: u32, r: Rect) -> Vec<u8> {
    let body = TransferToHost2d {
        r,
        offset: 0,
        resource_id: id,
        padding: 0,
    };
    req(t::TRANSFER_TO_HOST_2D, body.as_slice(), &[])
}

fn set_scanout(scanout_id: u32, id: u32, r: Rect) -> Vec<u8> {
    let body = SetScanout {
        r,
        scanout_id,
        resource_id: id,
    };
    req(t::SET_SCANOUT, body.as_slice(), &[])
}

/// Scattered 4 KiB pages for `bytes`: one entry per page.
fn scattered(gpu: &mut GpuFrontend, bytes: u64) -> Result<(Pages, Vec<MemEntry>), String> {
    let pages = gpu
        .ram_mut()
        .alloc(bytes.div_ceil(PAGE) as usize, Placement::Scattered)
        .map_err(|e| format!("allocating {bytes} scattered bytes: {e}"))?;
    let entries = pages.page_entries();
    Ok((pages, entries))
}

/// 2 MiB contiguous entries for `bytes` (a single smaller entry below
/// 2 MiB), with a free page between neighbours so that no two entries are
/// adjacent in guest memory (a backend could otherwise merge them).
fn contiguous(gpu: &mut GpuFrontend, bytes: u64) -> Result<(Pages, Vec<MemEntry>), String> {
    let mut addrs = Vec::new();
    let mut gaps = Vec::new();
    let mut entries = Vec::new();
    let mut left = bytes.div_ceil(PAGE) * PAGE;
    while left > 0 {
        let len = left.min(HUGE);
        let chunk = gpu
            .ram_mut()
            .alloc((len / PAGE) as usize, Placement::Contiguous)
            .map_err(|e| format!("allocating {bytes} contiguous bytes: {e}"))?;
        entries.push(MemEntry {
            addr: chunk.addrs()[0],
            length: len as u32,
            padding: 0,
        });
        addrs.extend_from_slice(chunk.addrs());
        let gap = gpu
            .ram_mut()
            .alloc(1, Placement::Contiguous)
            .map_err(|e| format!("allocating a gap page: {e}"))?;
        gaps.extend_from_slice(gap.addrs());
        left -= len;
    }
    gpu.ram_mut().free(&Pages::from_addrs(gaps));
    Ok((Pages::from_addrs(addrs), entries))
}

/// Workload 1.
pub fn round_trips(
    gpu: &mut GpuFrontend,
    w: &Workloads,
    cpu: CpuProbe,
) -> Result<RoundTrips, String> {
    const ID: u32 = 1;
    const SCRATCH: u32 = 2;
    ok(gpu, &create_2d(ID, 64, 64), "RESOURCE_CREATE_2D")?;
    // gpuswap flushes only attached resources; give both the same backing.
    let (pages, entries) = scattered(gpu, 64 * 64 * 4)?;
    ok(gpu, &attach(ID, &entries), "RESOURCE_ATTACH_BACKING")?;
    let fl = flush(
        ID,
        Rect {
            x: 0,
            y: 0,
            width: 64,
            height: 64,
        },
    );
    let flush_single = measure(w.rt_plan, w.rt_batch, cpu, || {
        ok(gpu, &fl, "RESOURCE_FLUSH")
    })?;

    let depth = w.pipeline_depth;
    let batches = (w.rt_batch / depth).max(1);
    let pipelined = measure(w.rt_plan, batches, cpu, || {
        let done = gpu
            .submit_pipelined(QueueId::Control, std::iter::repeat_n(&fl[..], depth), HDR)
            .map_err(|e| format!("pipelined RESOURCE_FLUSH: {e}"))?;
        for c in &done {
            let ty = response_type(&c.response)?;
            if ty != t::RESP_OK_NODATA {
                return Err(format!("pipelined RESOURCE_FLUSH: {}", response_name(ty)));
            }
        }
        Ok(())
    })?;
    let flush_pipelined = pipelined.per(depth);

    let create = create_2d(SCRATCH, 64, 64);
    let unref = id_req(t::RESOURCE_UNREF, SCRATCH);
    let create_unref = measure(w.rt_plan, (w.rt_batch / 2).max(1), cpu, || {
        ok(gpu, &create, "RESOURCE_CREATE_2D")?;
        ok(gpu, &unref, "RESOURCE_UNREF")
    })?;

    ok(gpu, &id_req(t::RESOURCE_UNREF, ID), "RESOURCE_UNREF")?;
    gpu.ram_mut().free(&pages);
    Ok(RoundTrips {
        flush: flush_single,
        flush_pipelined,
        pipeline_depth: depth,
        create_unref,
    })
}

/// Workload 2, one layout, every size. Sizes past a refusal are tried
/// once each (they are refused too, or the refusal was not about size).
pub fn attach_detach(
    gpu: &mut GpuFrontend,
    w: &Workloads,
    layout: Layout,
    cpu: CpuProbe,
) -> Result<Vec<AttachPoint>, String> {
    const ID: u32 = 3;
    // A 2D resource's backing may be larger than its content; 64x64 keeps
    // the host copy small whatever the backing size.
    ok(gpu, &create_2d(ID, 64, 64), "RESOURCE_CREATE_2D")?;
    let detach = id_req(t::RESOURCE_DETACH_BACKING, ID);
    let mut out = Vec::new();
    for &bytes in &w.attach_sizes {
        let (pages, entries) = match layout {
            Layout::Scattered4k => scattered(gpu, bytes)?,
            Layout::Contiguous2m => contiguous(gpu, bytes)?,
        };
        let att = attach(ID, &entries);
        let mut point = AttachPoint {
            layout,
            bytes,
            entries: entries.len() as u64,
            cycle: None,
            refused: None,
        };
        match call(gpu, &att)? {
            t::RESP_OK_NODATA => {
                ok(gpu, &detach, "RESOURCE_DETACH_BACKING")?;
                let stat = measure(w.attach_plan, 1, cpu, || {
                    ok(gpu, &att, "RESOURCE_ATTACH_BACKING")?;
                    ok(gpu, &detach, "RESOURCE_DETACH_BACKING")
                })?;
                point.cycle = Some(stat);
            }
            other => point.refused = Some(response_name(other)),
        }
        gpu.ram_mut().free(&pages);
        out.push(point);
    }
    ok(gpu, &id_req(t::RESOURCE_UNREF, ID), "RESOURCE_UNREF")?;
    Ok(out)
}

/// Workload 3.
pub fn transfers(
    gpu: &mut GpuFrontend,
    w: &Workloads,
    cpu: CpuProbe,
) -> Result<Vec<TransferPoint>, String> {
    const ID: u32 = 4;
    let mut out = Vec::new();
    for frame in &w.frames {
        ok(
            gpu,
            &create_2d(ID, frame.width, frame.height),
            "RESOURCE_CREATE_2D",
        )?;
        let (pages, entries) = scattered(gpu, frame.bytes())?;
        gpu.ram()
            .write_entries(&entries, 0, &pattern(frame.bytes() as usize, 7))
            .map_err(|e| format!("writing the frame: {e}"))?;
        ok(gpu, &attach(ID, &entries), "RESOURCE_ATTACH_BACKING")?;
        let tr = transfer(ID, frame.rect());
        let stat = measure(w.transfer_plan, 1, cpu, || {
            ok(gpu, &tr, "TRANSFER_TO_HOST_2D")
        })?;
        ok(gpu, &id_req(t::RESOURCE_UNREF, ID), "RESOURCE_UNREF")?;
        gpu.ram_mut().free(&pages);
        out.push(TransferPoint {
            frame: frame.name.to_string(),
            bytes: frame.bytes(),
            entries: entries.len() as u64,
            transfer: stat,
        });
    }
    Ok(out)
}

/// memcpy of each frame size, with the transfer plan: between two
/// buffers of this process (both touched first), and gathered from
/// scattered 4 KiB pages of a memfd guest RAM like the frontend's.
pub fn memcpy(w: &Workloads) -> Result<Vec<MemcpyPoint>, String> {
    let none: CpuProbe = &|| None;
    let mut ram = GuestRam::new(&[RegionSpec::new(0, w.ram_bytes)])
        .map_err(|e| format!("guest RAM for the gather copy: {e}"))?;
    let mut out = Vec::new();
    for frame in &w.frames {
        let n = frame.bytes() as usize;
        let mut src = Placed::new(n, 0);
        src.get().copy_from_slice(&pattern(n, 11));
        let mut dst = Placed::new(n, 0);
        let copy = measure(w.transfer_plan, 1, none, || {
            dst.get().copy_from_slice(std::hint::black_box(src.get()));
            std::hint::black_box(dst.get());
            Ok(())
        })?
        .wall;

        let pages = ram
            .alloc(n.div_ceil(PAGE as usize), Placement::Scattered)
            .map_err(|e| format!("pages for the gather copy: {e}"))?;
        let entries = pages.page_entries();
        ram.write_entries(&entries, 0, src.get())
            .map_err(|e| format!("writing the gather source: {e}"))?;
        let mem = ram.memory();
        // Host addresses resolved once, as a backend does at attach.
        let mut slices = Vec::with_capacity(entries.len());
        let mut left = n;
        for e in &entries {
            let len = left.min(e.length as usize);
            let slice = mem
                .get_slice(GuestAddress(e.addr), len)
                .map_err(|err| format!("page {:#x}: {err}", e.addr))?;
            slices.push(slice);
            left -= len;
        }
        let gather_into = |dst: &mut Placed| {
            measure(w.transfer_plan, 1, none, || {
                let dst = dst.get();
                let mut at = 0;
                for s in &slices {
                    s.copy_to(&mut dst[at..at + s.len()]);
                    at += s.len();
                }
                std::hint::black_box(dst);
                Ok(())
            })
            .map(|t| t.wall)
        };
        let gather = gather_into(&mut dst)?;
        let gather_offset16 = gather_into(&mut Placed::new(n, 16))?;
        ram.free(&pages);
        out.push(MemcpyPoint {
            frame: frame.name.to_string(),
            bytes: frame.bytes(),
            copy,
            gather,
            gather_offset16,
        });
    }
    Ok(out)
}

/// Waits for the display's UPDATE of the whole frame and hashes it where
/// it lies (no copy), then clears the recorded events.
fn update_hash(display: &DisplayHandle, frame: &Frame) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = display.with_state(|st| {
            st.events.iter().find_map(|e| match e {
                DisplayEvent::Update {
                    x,
                    y,
                    width,
                    height,
                    data,
                    ..
                } => Some(((*x, *y, *width, *height), xxhash_rust::xxh3::xxh3_64(data))),
                _ => None,
            })
        });
        if let Some((rect, hash)) = found {
            display.take_events();
            if rect != (0, 0, frame.width, frame.height) {
                return Err(format!("UPDATE of {rect:?}, not the whole frame"));
            }
            return Ok(hash);
        }
        if display.is_closed() || Instant::now() > deadline {
            return Err("no UPDATE on the display channel".into());
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Resource `SCANOUT_ID`, `frame` sized, with one backing per seed in
/// guest RAM (not attached), each holding its own pattern.
struct ScanoutFrame {
    /// Per seed: its pages, its ATTACH request and its pattern's hash.
    backings: Vec<(Pages, Vec<u8>, u64)>,
}

const SCANOUT_ID: u32 = 5;

impl ScanoutFrame {
    fn create(gpu: &mut GpuFrontend, frame: &Frame, seeds: &[u64]) -> Result<Self, String> {
        let id = SCANOUT_ID;
        ok(
            gpu,
            &create_2d(id, frame.width, frame.height),
            "RESOURCE_CREATE_2D",
        )?;
        let mut backings = Vec::new();
        for &seed in seeds {
            let (pages, entries) = scattered(gpu, frame.bytes())?;
            let pix = pattern(frame.bytes() as usize, seed);
            gpu.ram()
                .write_entries(&entries, 0, &pix)
                .map_err(|e| format!("writing the frame: {e}"))?;
            backings.push((
                pages,
                attach(id, &entries),
                xxhash_rust::xxh3::xxh3_64(&pix),
            ));
        }
        Ok(ScanoutFrame { backings })
    }

    /// Attaches backing `k`, transfers it and shows the resource on
    /// scanout 0.
    fn show(&self, gpu: &mut GpuFrontend, frame: &Frame, k: usize) -> Result<(), String> {
        ok(gpu, &self.backings[k].1, "RESOURCE_ATTACH_BACKING")?;
        ok(
            gpu,
            &transfer(SCANOUT_ID, frame.rect()),
            "TRANSFER_TO_HOST_2D",
        )?;
        ok(
            gpu,
            &set_scanout(0, SCANOUT_ID, frame.rect()),
            "SET_SCANOUT",
        )
    }

    /// Takes the resource off the scanout, drops it and frees its pages.
    fn release(self, gpu: &mut GpuFrontend, display: &DisplayHandle) -> Result<(), String> {
        let none = Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        };
        ok(gpu, &set_scanout(0, 0, none), "SET_SCANOUT (disable)")?;
        ok(
            gpu,
            &id_req(t::RESOURCE_UNREF, SCANOUT_ID),
            "RESOURCE_UNREF",
        )?;
        for (pages, _, _) in &self.backings {
            gpu.ram_mut().free(pages);
        }
        display.take_events();
        Ok(())
    }
}

fn display_of(gpu: &GpuFrontend) -> Result<DisplayHandle, String> {
    Ok(gpu
        .display()
        .ok_or("the frontend has no display channel")?
        .clone())
}

/// Workload 4.
pub fn evict_restore(
    gpu: &mut GpuFrontend,
    w: &Workloads,
    cpu: CpuProbe,
) -> Result<Vec<EvictPoint>, String> {
    let display = display_of(gpu)?;
    let mut out = Vec::new();
    for frame in &w.evict_frames {
        // Two backings with different content: each cycle restores the
        // resource from the one it was not attached to.
        let scanout = ScanoutFrame::create(gpu, frame, &[21, 22])?;
        let sets = &scanout.backings;
        let entries = frame.bytes().div_ceil(PAGE);
        let detach = id_req(t::RESOURCE_DETACH_BACKING, SCANOUT_ID);
        let tr = transfer(SCANOUT_ID, frame.rect());
        let fl = flush(SCANOUT_ID, frame.rect());
        scanout.show(gpu, frame, 0)?;
        display.take_events();
        let mut current = 0usize;
        let mut phases: [Vec<f64>; 4] = Default::default();
        let cycle = measure(w.evict_plan, 1, cpu, || {
            let next = 1 - current;
            let t0 = Instant::now();
            ok(gpu, &detach, "RESOURCE_DETACH_BACKING")?;
            let t1 = Instant::now();
            ok(gpu, &sets[next].1, "RESOURCE_ATTACH_BACKING")?;
            let t2 = Instant::now();
            ok(gpu, &tr, "TRANSFER_TO_HOST_2D")?;
            let t3 = Instant::now();
            ok(gpu, &fl, "RESOURCE_FLUSH")?;
            let hash = update_hash(&display, frame)?;
            let t4 = Instant::now();
            if hash != sets[next].2 {
                return Err(format!(
                    "{}: the display shows {hash:016x} after restore, {:016x} was written",
                    frame.name, sets[next].2
                ));
            }
            current = next;
            phases[0].push((t1 - t0).as_secs_f64());
            phases[1].push((t2 - t1).as_secs_f64());
            phases[2].push((t3 - t2).as_secs_f64());
            phases[3].push((t4 - t3).as_secs_f64());
            Ok(())
        })?;
        // The warm-up cycles are in `phases` too; keep only the timed ones.
        let samples = cycle.wall.samples;
        let timed = |v: &Vec<f64>| {
            Stat::from_samples(v[v.len() - samples..].to_vec(), 1).ok_or("no samples")
        };
        out.push(EvictPoint {
            frame: frame.name.to_string(),
            bytes: frame.bytes(),
            entries,
            evict: timed(&phases[0])?,
            attach: timed(&phases[1])?,
            transfer: timed(&phases[2])?,
            verify: timed(&phases[3])?,
            verified: samples,
            cycle,
        });
        scanout.release(gpu, &display)?;
    }
    Ok(out)
}

/// Workload 5: what a display peer gets per frame from a guest that
/// renders in guest memory (a 2D client): the whole frame transferred,
/// the scanout flushed, its UPDATE received and hashed by the peer.
pub fn display_frames(
    gpu: &mut GpuFrontend,
    w: &Workloads,
    cpu: CpuProbe,
) -> Result<Vec<DisplayPoint>, String> {
    let display = display_of(gpu)?;
    let mut out = Vec::new();
    for frame in &w.evict_frames {
        let scanout = ScanoutFrame::create(gpu, frame, &[23])?;
        let written = scanout.backings[0].2;
        let tr = transfer(SCANOUT_ID, frame.rect());
        let fl = flush(SCANOUT_ID, frame.rect());
        scanout.show(gpu, frame, 0)?;
        display.take_events();
        let frame_time = measure(w.evict_plan, 1, cpu, || {
            ok(gpu, &tr, "TRANSFER_TO_HOST_2D")?;
            ok(gpu, &fl, "RESOURCE_FLUSH")?;
            let hash = update_hash(&display, frame)?;
            if hash != written {
                return Err(format!(
                    "{}: the display shows {hash:016x}, {written:016x} was written",
                    frame.name
                ));
            }
            Ok(())
        })?;
        out.push(DisplayPoint {
            frame: frame.name.to_string(),
            bytes: frame.bytes(),
            verified: frame_time.wall.samples,
            frame_time,
        });
        scanout.release(gpu, &display)?;
    }
    Ok(out)
}

impl BackendResults {
    /// Adds the samples of another run of the same backend on the same
    /// workloads (rounds of a run are interleaved across backends, so
    /// each backend sees the machine's load change alike).
    pub fn merge(&mut self, other: BackendResults) {
        let rt = &mut self.round_trips;
        rt.flush = rt.flush.merged(&other.round_trips.flush);
        rt.flush_pipelined = rt
            .flush_pipelined
            .merged(&other.round_trips.flush_pipelined);
        rt.create_unref = rt.create_unref.merged(&other.round_trips.create_unref);
        for p in other.attach_detach {
            let Some(q) = self
                .attach_detach
                .iter_mut()
                .find(|q| q.layout == p.layout && q.bytes == p.bytes)
            else {
                self.attach_detach.push(p);
                continue;
            };
            q.cycle = match (q.cycle.take(), p.cycle) {
                (Some(a), Some(b)) => Some(a.merged(&b)),
                (a, b) => a.or(b),
            };
            if q.refused.is_none() {
                q.refused = p.refused;
            }
        }
        for p in other.transfers {
            match self.transfers.iter_mut().find(|q| q.frame == p.frame) {
                Some(q) => q.transfer = q.transfer.merged(&p.transfer),
                None => self.transfers.push(p),
            }
        }
        for p in other.evict_restore {
            match self.evict_restore.iter_mut().find(|q| q.frame == p.frame) {
                Some(q) => {
                    q.cycle = q.cycle.merged(&p.cycle);
                    q.evict = q.evict.merged(&p.evict);
                    q.attach = q.attach.merged(&p.attach);
                    q.transfer = q.transfer.merged(&p.transfer);
                    q.verify = q.verify.merged(&p.verify);
                    q.verified += p.verified;
                }
                None => self.evict_restore.push(p),
            }
        }
        for p in other.display {
            match self.display.iter_mut().find(|q| q.frame == p.frame) {
                Some(q) => {
                    q.frame_time = q.frame_time.merged(&p.frame_time);
                    q.verified += p.verified;
                }
                None => self.display.push(p),
            }
        }
    }
}

impl MemcpyPoint {
    /// Adds the samples of another measurement of the same frame.
    pub fn merge(&mut self, other: &MemcpyPoint) {
        self.copy = self.copy.merged(&other.copy);
        self.gather = self.gather.merged(&other.gather);
        self.gather_offset16 = self.gather_offset16.merged(&other.gather_offset16);
    }
}

/// The floor under every round trip on this machine: two threads of this
/// process ping-pong through two eventfds, each sleeping in poll(2) and
/// reading its eventfd before writing the other's, as a frontend (kick,
/// wait for the call) and an eventfd-driven backend (wait for the kick,
/// call) do. No backend's one-at-a-time round trip can beat it.
pub fn wakeup_floor(w: &Workloads) -> Result<Stat, String> {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::eventfd::{EfdFlags, EventFd};

    let new =
        || EventFd::from_value_and_flags(0, EfdFlags::empty()).map_err(|e| format!("eventfd: {e}"));
    let (kick, call) = (Arc::new(new()?), Arc::new(new()?));
    let stop = Arc::new(AtomicBool::new(false));
    let wait = |fd: &EventFd| -> Result<(), String> {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(5000u16)).map_err(|e| format!("poll: {e}"))?;
        fd.read()
            .map(|_| ())
            .map_err(|e| format!("eventfd read: {e}"))
    };
    let peer = {
        let (kick, call, stop) = (kick.clone(), call.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), String> {
            loop {
                wait(&kick)?;
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                call.write(1).map_err(|e| format!("eventfd write: {e}"))?;
            }
        })
    };
    let none: CpuProbe = &|| None;
    let result = measure(w.rt_plan, w.rt_batch, none, || {
        kick.write(1).map_err(|e| format!("eventfd write: {e}"))?;
        wait(&call)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = kick.write(1);
    peer.join()
        .map_err(|_| "wakeup peer panicked".to_string())??;
    Ok(result?.wall)
}
