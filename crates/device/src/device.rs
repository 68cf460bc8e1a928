//! The virtio-gpu device model: resources, their backing state machine,
//! scanouts and the cursor. Independent of vhost-user: the daemon hands it
//! decoded requests and guest memory, and writes back its responses.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuswap_protocol::wire::{self, DisplayOne, MAX_SCANOUTS};
use gpuswap_protocol::{
    blob_mem, ctrl_type, edid, format, Command, DecodeError, ErrorCode, Request, Response,
};
use log::{debug, warn};
use vm_memory::GuestMemoryBackend;

use crate::display::{Display, DisplayMode, CURSOR_SIZE};
use crate::limited_warn;
use crate::log_limit::LogLimit;
use crate::memory::{self, GuestExtent, PageOwners};
use crate::renderer::{Rect2d, Renderer};
use crate::trace::{Counters, DetachReason, Event, EventKind, InjectedFault, Trace, Violation};

mod inspect;
pub use inspect::{hex, ResourceInfo, ResourceSnapshot, HOST_BAND};

/// Host memory charged per live resource for its bookkeeping.
pub const RESOURCE_OVERHEAD: u64 = 256;
/// Host memory charged per backing entry (the extent and its iovec).
pub const ENTRY_OVERHEAD: u64 = 32;

/// Limits and defaults. Every guest-controlled size is checked against
/// these before anything is allocated.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Host memory for host copies and bookkeeping, in bytes.
    pub max_host_memory: u64,
    /// Entries per ATTACH_BACKING or CREATE_BLOB.
    pub max_entries: u32,
    /// Scanout modes reported when no display answers GET_DISPLAY_INFO.
    pub scanouts: Vec<(u32, u32)>,
    /// Events kept for `trace` queries.
    pub trace_capacity: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            max_host_memory: 2 << 30,
            // A 2 GiB backing in 4 KiB pages: 1 GiB with room to spare.
            max_entries: 1 << 19,
            scanouts: vec![(1280, 800)],
            trace_capacity: 1 << 18,
        }
    }
}

/// Faults the control socket (or the daemon's command line) can inject to
/// widen race windows and to check that a harness notices bad data. Each
/// one that fires is counted in `faults_injected` and traced as a `fault`
/// event on its resource.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail this many upcoming ATTACH_BACKINGs with ERR_OUT_OF_MEMORY.
    pub fail_attaches: u32,
    /// Corrupt the host copy after this many upcoming TRANSFER_TO_HOST_2Ds
    /// that succeed and copy at least one pixel: after the real copy, the
    /// first byte of the transferred rect in the host copy is XORed with
    /// 0xff, so it no longer matches the guest's data. Failed, empty and
    /// blob transfers leave the count alone.
    pub corrupt_transfers: u32,
    /// Delay the completion of these request types by so many ms (applied
    /// by the queue handler; the device only stores them).
    pub delay_ms: BTreeMap<u32, u64>,
}

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    TwoD {
        format: u32,
        width: u32,
        height: u32,
    },
    GuestBlob {
        flags: u32,
        size: u64,
    },
}

impl ResourceKind {
    /// Bytes of content: the host copy for 2D, the blob size for blobs.
    pub fn content_len(&self) -> u64 {
        match *self {
            ResourceKind::TwoD { width, height, .. } => {
                u64::from(width) * u64::from(height) * u64::from(format::BYTES_PER_PIXEL)
            }
            ResourceKind::GuestBlob { size, .. } => size,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            ResourceKind::TwoD { .. } => "2d",
            ResourceKind::GuestBlob { .. } => "blob",
        }
    }
}

#[derive(Debug)]
enum Backing {
    Detached,
    /// The extents as the guest sent them (decoded once, moved here): the
    /// one place a backing is stored. The page-ownership index refers to
    /// them; the renderer gets host iovecs derived from them.
    Attached {
        extents: Vec<GuestExtent>,
        len: u64,
    },
}

/// Every attached backing in `resources`, for the page-ownership index.
fn attached_backings(
    resources: &BTreeMap<u32, Resource>,
) -> impl Iterator<Item = (u32, &[GuestExtent])> {
    resources
        .iter()
        .filter_map(|(&id, res)| match &res.backing {
            Backing::Attached { extents, .. } => Some((id, extents.as_slice())),
            Backing::Detached => None,
        })
}

#[derive(Debug)]
struct Resource {
    kind: ResourceKind,
    backing: Backing,
    /// Bumped by every successful attach (creation with entries included).
    generation: u64,
    /// Host memory charged to this resource, excluding its backing entries.
    charged: u64,
    uuid: Option<[u8; 16]>,
    /// Changes whenever the host copy does (see [`GpuDevice::host_copy_written`]).
    host_version: u64,
}

impl Resource {
    fn is_attached(&self) -> bool {
        matches!(self.backing, Backing::Attached { .. })
    }
}

/// What a scanout shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanoutSource {
    Resource2d {
        id: u32,
        rect: Rect2d,
    },
    Blob {
        id: u32,
        rect: Rect2d,
        stride: u32,
        offset: u32,
    },
}

impl ScanoutSource {
    fn resource_id(&self) -> u32 {
        match *self {
            ScanoutSource::Resource2d { id, .. } | ScanoutSource::Blob { id, .. } => id,
        }
    }

    fn rect(&self) -> Rect2d {
        match *self {
            ScanoutSource::Resource2d { rect, .. } | ScanoutSource::Blob { rect, .. } => rect,
        }
    }
}

/// A failed command: the response code and why, for the log.
struct Failure {
    code: ErrorCode,
    why: String,
}

type CmdResult = Result<Response, Failure>;

fn fail(code: ErrorCode, why: impl Into<String>) -> Failure {
    Failure {
        code,
        why: why.into(),
    }
}

/// The device model. `R` renders, `M` is guest memory.
pub struct GpuDevice<R: Renderer, M: GuestMemoryBackend> {
    config: DeviceConfig,
    renderer: R,
    mem: Option<Arc<M>>,
    owners: PageOwners,
    resources: BTreeMap<u32, Resource>,
    host_memory_used: u64,
    scanouts: Vec<Option<ScanoutSource>>,
    display: Option<Box<dyn Display>>,
    trace: Trace,
    counters: Counters,
    faults: Faults,
    uuid_seed: u64,
    /// The last host-copy version handed out.
    host_versions: u64,
    /// For the warnings a guest can trigger.
    log_limit: LogLimit,
    /// The pixels of the last display update, reused by the next: a fresh
    /// buffer per FLUSH costs a page fault per 4 KiB (8,100 for a 4K frame).
    display_pixels: Vec<u8>,
}

/// The largest display buffer kept between updates (a DCI 4K frame, 35
/// MB); a larger update allocates its own and gives it back, so what a
/// guest can make the daemon hold outside `--max-host-memory` stays small.
const MAX_KEPT_DISPLAY_PIXELS: usize = 4096 * 2160 * format::BYTES_PER_PIXEL as usize;

impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    pub fn new(config: DeviceConfig, renderer: R) -> Self {
        let scanouts = config.scanouts.len().clamp(1, MAX_SCANOUTS);
        let uuid_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        GpuDevice {
            trace: Trace::new(config.trace_capacity),
            config,
            renderer,
            mem: None,
            owners: PageOwners::default(),
            resources: BTreeMap::new(),
            host_memory_used: 0,
            scanouts: vec![None; scanouts],
            display: None,
            counters: Counters::default(),
            faults: Faults::default(),
            uuid_seed,
            host_versions: 0,
            log_limit: LogLimit::default(),
            display_pixels: Vec::new(),
        }
    }

    /// Number of scanouts, for the config space.
    pub fn num_scanouts(&self) -> u32 {
        self.scanouts.len() as u32
    }

    pub fn set_display(&mut self, display: Option<Box<dyn Display>>) {
        self.display = display;
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.trace
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.faults
    }

    /// Host memory currently charged, in bytes.
    pub fn host_memory_used(&self) -> u64 {
        self.host_memory_used
    }

    /// Number of live resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// Installs a new guest memory table and re-resolves every attached
    /// backing in it. A backing that is no longer guest RAM is detached and
    /// recorded as a violation. The previous table is released only after
    /// the renderer holds pointers into the new one.
    pub fn set_memory(&mut self, mem: Arc<M>) {
        self.owners = PageOwners::for_memory(&*mem);
        let ids: Vec<u32> = self.resources.keys().copied().collect();
        for id in ids {
            let Some(res) = self.resources.get(&id) else {
                continue;
            };
            let Backing::Attached { extents, .. } = &res.backing else {
                continue;
            };
            let resolved = memory::resolve(&*mem, extents);
            let generation = res.generation;
            // Detached first in every case: after this loop the renderer
            // holds no pointer into the previous table, which goes below.
            self.renderer.detach_backing(id);
            let lost = match resolved {
                Ok(iovecs) => {
                    self.owners
                        .claim(id, extents, attached_backings(&self.resources));
                    // SAFETY: the iovecs point into `mem`, which the device
                    // keeps alive (`self.mem`) until the next `set_memory`,
                    // which detaches first, or until the backing is
                    // detached.
                    unsafe { self.renderer.attach_backing(id, iovecs) }
                        .err()
                        .map(|e| {
                            (
                                format!("re-attach failed: {e}"),
                                DetachReason::ReattachFailed,
                                Violation::BackingLostOnMemoryChange,
                            )
                        })
                }
                Err(e) => Some((
                    e.to_string(),
                    DetachReason::MemoryRemoved,
                    Violation::BackingLeftGuestRam,
                )),
            };
            if let Some((why, reason, violation)) = lost {
                limited_warn!(
                    self.log_limit,
                    "set_mem_table",
                    "resource {id}: {why} after a memory change; detaching"
                );
                self.drop_backing(id);
                self.trace
                    .record(id, generation, EventKind::Detach { reason });
                self.violation(id, violation, "set_mem_table");
            }
        }
        self.mem = Some(mem);
    }

    /// Frees every resource and blanks the scanouts (device reset or
    /// frontend disconnect). Counters and the trace are kept.
    pub fn reset(&mut self) {
        let ids: Vec<u32> = self.resources.keys().copied().collect();
        for id in ids {
            self.destroy(id, DetachReason::Reset);
        }
        for (scanout, source) in self.scanouts.iter_mut().enumerate() {
            if source.take().is_some() {
                if let Some(d) = self.display.as_mut() {
                    d.scanout(scanout as u32, 0, 0);
                }
            }
        }
    }

    /// Frees every resource and forgets the guest memory table: the
    /// frontend that owns it is gone, and its guest RAM stays allocated on
    /// the host for as long as anything keeps it mapped.
    pub fn disconnect(&mut self) {
        self.reset();
        self.mem = None;
        self.owners = PageOwners::default();
    }

    /// Counts and logs a request that could not be decoded.
    pub fn record_malformed(&mut self, type_: Option<u32>, err: &DecodeError) {
        self.counters.malformed += 1;
        let name = type_.map_or("(no header)", ctrl_type::name);
        limited_warn!(self.log_limit, name, "malformed {name} request: {err}");
    }

    /// Executes one request and returns its response. Never panics on guest
    /// input: every failure is an error response and a log line.
    pub fn process(&mut self, req: Request) -> Response {
        let name = ctrl_type::name(req.cmd.type_code());
        *self.counters.commands.entry(name).or_default() += 1;
        let ctx_id = req.hdr.ctx_id;
        let result = match req.cmd {
            Command::GetDisplayInfo => Ok(self.display_info()),
            Command::GetEdid(args) => self.get_edid(args.scanout),
            Command::ResourceCreate2d(args) => self.create_2d(&args),
            Command::ResourceUnref(args) => self.unref(args.resource_id, name),
            Command::SetScanout(args) => self.set_scanout(&args, name),
            Command::ResourceFlush(args) => self.flush(args.resource_id, args.r.into(), name),
            Command::TransferToHost2d(args) => self.transfer_to_host(&args, name),
            Command::ResourceAttachBacking {
                resource_id,
                entries,
            } => self.attach(resource_id, entries, name),
            Command::ResourceDetachBacking(args) => self.detach(args.resource_id, name),
            Command::GetCapsetInfo(args) => Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "capset index {}: this device has no capsets",
                    args.capset_index
                ),
            )),
            Command::GetCapset(args) => Err(fail(
                ErrorCode::InvalidParameter,
                format!("capset {}: this device has no capsets", args.capset_id),
            )),
            Command::ResourceAssignUuid(args) => self.assign_uuid(args.resource_id, name),
            Command::ResourceCreateBlob { args, entries } => {
                self.create_blob(&args, ctx_id, entries, name)
            }
            Command::SetScanoutBlob(args) => self.set_scanout_blob(&args, name),
            Command::ResourceMapBlob(_) | Command::ResourceUnmapBlob(_) => Err(fail(
                ErrorCode::Unspec,
                "no host-visible memory: only guest-memory blobs are supported",
            )),
            Command::Context3d { .. } => Err(fail(
                ErrorCode::Unspec,
                "3D contexts need a 3D renderer, which this device does not have",
            )),
            Command::UpdateCursor(args) => self.update_cursor(&args, name),
            Command::MoveCursor(args) => {
                self.move_cursor(&args);
                Ok(Response::OkNoData)
            }
        };
        match result {
            Ok(response) => response,
            Err(f) => {
                *self.counters.errors.entry(name).or_default() += 1;
                limited_warn!(self.log_limit, name, "{name}: {} ({})", f.why, f.code);
                Response::Err(f.code)
            }
        }
    }

    fn violation(&mut self, id: u32, violation: Violation, command: &'static str) {
        self.counters.violations += 1;
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        self.trace
            .record(id, generation, EventKind::Violation { violation, command });
    }

    /// Looks up a live resource, recording a violation when it is not.
    fn live(&mut self, id: u32, command: &'static str) -> Result<&mut Resource, Failure> {
        if !self.resources.contains_key(&id) {
            self.violation(id, Violation::UnknownResource, command);
            return Err(fail(
                ErrorCode::InvalidResourceId,
                format!("resource {id} is not live"),
            ));
        }
        self.resources
            .get_mut(&id)
            .ok_or_else(|| fail(ErrorCode::InvalidResourceId, "resource vanished"))
    }

    /// Like `live`, and the resource must be attached.
    fn attached(&mut self, id: u32, command: &'static str) -> Result<ResourceKind, Failure> {
        let res = self.live(id, command)?;
        if res.is_attached() {
            return Ok(res.kind);
        }
        self.violation(id, Violation::UseWhileDetached, command);
        Err(fail(
            ErrorCode::Unspec,
            format!("resource {id} has no backing attached"),
        ))
    }

    fn charge(&mut self, bytes: u64, what: &str) -> Result<(), Failure> {
        match self.host_memory_used.checked_add(bytes) {
            Some(total) if total <= self.config.max_host_memory => {
                self.host_memory_used = total;
                Ok(())
            }
            _ => Err(fail(
                ErrorCode::OutOfMemory,
                format!(
                    "{what} needs {bytes} bytes; {} of {} in use",
                    self.host_memory_used, self.config.max_host_memory
                ),
            )),
        }
    }

    fn uncharge(&mut self, bytes: u64) {
        self.host_memory_used = self.host_memory_used.saturating_sub(bytes);
    }

    fn check_new_id(&mut self, id: u32, command: &'static str) -> Result<(), Failure> {
        if id == 0 {
            return Err(fail(
                ErrorCode::InvalidResourceId,
                "resource id 0 is reserved",
            ));
        }
        if self.resources.contains_key(&id) {
            self.violation(id, Violation::DuplicateResource, command);
            return Err(fail(
                ErrorCode::InvalidResourceId,
                format!("resource {id} already exists"),
            ));
        }
        Ok(())
    }

    fn display_info(&mut self) -> Response {
        let modes = self
            .display
            .as_mut()
            .and_then(|d| d.display_info())
            .unwrap_or_else(|| {
                self.config
                    .scanouts
                    .iter()
                    .map(|&(width, height)| DisplayMode {
                        width,
                        height,
                        enabled: true,
                    })
                    .collect()
            });
        let mut pmodes = [DisplayOne::default(); MAX_SCANOUTS];
        for (slot, mode) in pmodes.iter_mut().zip(modes).take(self.scanouts.len()) {
            slot.r.width = mode.width;
            slot.r.height = mode.height;
            slot.enabled = u32::from(mode.enabled);
        }
        Response::OkDisplayInfo(Box::new(pmodes))
    }

    fn get_edid(&mut self, scanout: u32) -> CmdResult {
        self.check_scanout_id(scanout)?;
        let blob = self.display.as_mut().and_then(|d| d.edid(scanout));
        let blob = blob.unwrap_or_else(|| {
            let (w, h) = self
                .config
                .scanouts
                .get(scanout as usize)
                .copied()
                .unwrap_or((1280, 800));
            edid::generate(w, h).to_vec()
        });
        let mut out = Box::new([0u8; wire::EDID_BLOB_SIZE]);
        let len = blob.len().min(wire::EDID_BLOB_SIZE);
        out[..len].copy_from_slice(&blob[..len]);
        Ok(Response::OkEdid(out, len as u32))
    }

    fn create_2d(&mut self, args: &wire::ResourceCreate2d) -> CmdResult {
        let name = ctrl_type::name(ctrl_type::RESOURCE_CREATE_2D);
        let id = args.resource_id;
        self.check_new_id(id, name)?;
        if !format::is_valid(args.format) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: unknown format {}", args.format),
            ));
        }
        if args.width == 0 || args.height == 0 {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: empty"),
            ));
        }
        // The renderer computes the stride in u32 and the size in usize.
        let size = args
            .width
            .checked_mul(format::BYTES_PER_PIXEL)
            .and_then(|stride| u64::from(stride).checked_mul(u64::from(args.height)))
            .ok_or_else(|| {
                fail(
                    ErrorCode::InvalidParameter,
                    format!("resource {id}: {}x{} overflows", args.width, args.height),
                )
            })?;
        let charged = size + RESOURCE_OVERHEAD;
        self.charge(charged, &format!("resource {id}"))?;
        if let Err(e) = self
            .renderer
            .create_2d(id, args.format, args.width, args.height)
        {
            self.uncharge(charged);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let kind = ResourceKind::TwoD {
            format: args.format,
            width: args.width,
            height: args.height,
        };
        self.insert(id, kind, charged);
        Ok(Response::OkNoData)
    }

    fn insert(&mut self, id: u32, kind: ResourceKind, charged: u64) {
        self.resources.insert(
            id,
            Resource {
                kind,
                backing: Backing::Detached,
                generation: 0,
                charged,
                uuid: None,
                host_version: 0,
            },
        );
        self.host_copy_written(id);
        self.counters.resources_created += 1;
        self.trace.record(
            id,
            0,
            EventKind::Create {
                kind: kind.name(),
                size: kind.content_len(),
            },
        );
    }

    /// Gives resource `id`'s host copy a version no other host copy has
    /// had, so that an inspection reading it in bands sees any change.
    fn host_copy_written(&mut self, id: u32) {
        self.host_versions += 1;
        if let Some(res) = self.resources.get_mut(&id) {
            res.host_version = self.host_versions;
        }
    }

    fn create_blob(
        &mut self,
        args: &wire::ResourceCreateBlob,
        ctx_id: u32,
        entries: Vec<GuestExtent>,
        name: &'static str,
    ) -> CmdResult {
        let id = args.resource_id;
        self.check_new_id(id, name)?;
        if args.blob_mem != blob_mem::GUEST {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: blob_mem {} needs host memory this device does not have",
                    args.blob_mem
                ),
            ));
        }
        if ctx_id != 0 {
            return Err(fail(
                ErrorCode::InvalidContextId,
                format!("resource {id}: context {ctx_id} does not exist"),
            ));
        }
        if args.size == 0 {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: empty"),
            ));
        }
        self.charge(RESOURCE_OVERHEAD, &format!("resource {id}"))?;
        if let Err(e) = self
            .renderer
            .create_guest_blob(id, args.blob_flags, args.size)
        {
            self.uncharge(RESOURCE_OVERHEAD);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let kind = ResourceKind::GuestBlob {
            flags: args.blob_flags,
            size: args.size,
        };
        self.insert(id, kind, RESOURCE_OVERHEAD);
        // The spec allows nr_entries == 0 with ATTACH_BACKING later, for
        // drivers that swap blob pages out and in.
        if !entries.is_empty() {
            if let Err(f) = self.attach(id, entries, name) {
                self.destroy(id, DetachReason::Unref);
                return Err(f);
            }
        }
        Ok(Response::OkNoData)
    }

    fn attach(&mut self, id: u32, extents: Vec<GuestExtent>, name: &'static str) -> CmdResult {
        let res = self.live(id, name)?;
        if res.is_attached() {
            self.violation(id, Violation::DoubleAttach, name);
            return Err(fail(
                ErrorCode::Unspec,
                format!("resource {id} already has a backing"),
            ));
        }
        let kind = res.kind;
        if extents.is_empty() {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: attach with no entries"),
            ));
        }
        if self.faults.fail_attaches > 0 {
            self.faults.fail_attaches -= 1;
            self.counters.faults_injected += 1;
            let generation = self.resources.get(&id).map_or(0, |r| r.generation);
            self.trace.record(
                id,
                generation,
                EventKind::Fault {
                    fault: InjectedFault::FailAttach,
                },
            );
            return Err(fail(ErrorCode::OutOfMemory, "injected attach failure"));
        }
        let bad = |e: memory::BackingError| {
            fail(ErrorCode::InvalidParameter, format!("resource {id}: {e}"))
        };
        let len = memory::validate(&extents).map_err(bad)?;
        if let ResourceKind::GuestBlob { size, .. } = kind {
            if len < size {
                return Err(fail(
                    ErrorCode::InvalidParameter,
                    format!("resource {id}: backing of {len} bytes for a {size}-byte blob"),
                ));
            }
        }
        let Some(mem) = self.mem.clone() else {
            return Err(fail(ErrorCode::Unspec, "no guest memory table yet"));
        };
        let iovecs = memory::resolve(&*mem, &extents).map_err(bad)?;
        let entry_bytes = extents.len() as u64 * ENTRY_OVERHEAD;
        self.charge(entry_bytes, &format!("backing of resource {id}"))?;
        // SAFETY: the iovecs point into `self.mem`, which stays mapped until
        // `set_memory` re-attaches every backing into a new table, and the
        // renderer drops them on detach or unref.
        if let Err(e) = unsafe { self.renderer.attach_backing(id, iovecs) } {
            self.uncharge(entry_bytes);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let conflicts = self
            .owners
            .claim(id, &extents, attached_backings(&self.resources));
        let entries = extents.len() as u32;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or_else(|| fail(ErrorCode::InvalidResourceId, "resource vanished"))?;
        res.generation += 1;
        res.backing = Backing::Attached { extents, len };
        let generation = res.generation;
        self.counters.attaches += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Attach {
                entries,
                bytes: len,
            },
        );
        // Overlap is a guest bug (pages freed while still attached), not a
        // reason to refuse: record it for the harness and go on.
        for other in conflicts {
            limited_warn!(
                self.log_limit,
                "overlapping backing",
                "resource {id}: backing overlaps live resource {other}"
            );
            self.violation(id, Violation::OverlappingBacking { other }, name);
        }
        Ok(Response::OkNoData)
    }

    /// Forgets a resource's backing (renderer already told); returns
    /// whether it had one.
    fn drop_backing(&mut self, id: u32) -> bool {
        let Some(res) = self.resources.get_mut(&id) else {
            return false;
        };
        let Backing::Attached { extents, .. } =
            std::mem::replace(&mut res.backing, Backing::Detached)
        else {
            return false;
        };
        self.owners.release(id, &extents);
        self.uncharge(extents.len() as u64 * ENTRY_OVERHEAD);
        true
    }

    fn detach(&mut self, id: u32, name: &'static str) -> CmdResult {
        let res = self.live(id, name)?;
        if !res.is_attached() {
            self.violation(id, Violation::DoubleDetach, name);
            return Err(fail(
                ErrorCode::Unspec,
                format!("resource {id} has no backing to detach"),
            ));
        }
        let generation = res.generation;
        self.renderer.detach_backing(id);
        self.drop_backing(id);
        self.counters.detaches += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Detach {
                reason: DetachReason::Command,
            },
        );
        Ok(Response::OkNoData)
    }

    fn unref(&mut self, id: u32, name: &'static str) -> CmdResult {
        self.live(id, name)?;
        self.destroy(id, DetachReason::Unref);
        Ok(Response::OkNoData)
    }

    /// Removes a live resource: implicit detach, scanouts and cursor off,
    /// renderer and memory accounting released.
    fn destroy(&mut self, id: u32, reason: DetachReason) {
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        if self.drop_backing(id) {
            self.counters.implicit_detaches += 1;
            self.trace
                .record(id, generation, EventKind::Detach { reason });
        }
        for scanout in 0..self.scanouts.len() {
            if self.scanouts[scanout].is_some_and(|s| s.resource_id() == id) {
                self.scanouts[scanout] = None;
                if let Some(d) = self.display.as_mut() {
                    d.scanout(scanout as u32, 0, 0);
                }
                self.trace.record(
                    id,
                    generation,
                    EventKind::Scanout {
                        scanout_id: scanout as u32,
                        enabled: false,
                    },
                );
            }
        }
        if let Err(e) = self.renderer.unref(id) {
            warn!("resource {id}: {e}");
        }
        if let Some(res) = self.resources.remove(&id) {
            self.uncharge(res.charged);
        }
        self.counters.resources_unreferenced += 1;
        self.trace.record(id, generation, EventKind::Unref);
    }

    fn check_rect(id: u32, rect: Rect2d, width: u32, height: u32) -> Result<(), Failure> {
        let inside =
            |pos: u32, len: u32, limit: u32| pos.checked_add(len).is_some_and(|end| end <= limit);
        if inside(rect.x, rect.width, width) && inside(rect.y, rect.height, height) {
            Ok(())
        } else {
            Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: rect {rect:?} outside {width}x{height}"),
            ))
        }
    }

    fn transfer_to_host(&mut self, args: &wire::TransferToHost2d, name: &'static str) -> CmdResult {
        let id = args.resource_id;
        let kind = self.attached(id, name)?;
        let rect: Rect2d = args.r.into();
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        let ResourceKind::TwoD { width, height, .. } = kind else {
            // A guest blob's content is its backing: nothing to copy.
            self.trace.record(
                id,
                generation,
                EventKind::Transfer {
                    rect,
                    offset: args.offset,
                },
            );
            return Ok(Response::OkNoData);
        };
        Self::check_rect(id, rect, width, height)?;
        if rect.width == 0 || rect.height == 0 {
            return Ok(Response::OkNoData);
        }
        // The source rows start at `offset` and are `width * 4` apart (the
        // layout QEMU and the Linux driver use); they must be in the backing.
        let stride = u64::from(width) * u64::from(format::BYTES_PER_PIXEL);
        let row = u64::from(rect.width) * u64::from(format::BYTES_PER_PIXEL);
        let backing_len = match self.resources.get(&id).map(|r| &r.backing) {
            Some(Backing::Attached { len, .. }) => *len,
            _ => 0,
        };
        let end = (u64::from(rect.height) - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(args.offset));
        if end.is_none_or(|end| end > backing_len) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: transfer of {rect:?} at offset {} reads past the {backing_len}-byte backing",
                    args.offset
                ),
            ));
        }
        self.renderer
            .transfer_to_host_2d(id, rect, args.offset, stride as u32)
            .map_err(|e| fail(ErrorCode::InvalidParameter, e.to_string()))?;
        self.host_copy_written(id);
        self.counters.transfers += 1;
        self.counters.bytes_transferred += row * u64::from(rect.height);
        self.trace.record(
            id,
            generation,
            EventKind::Transfer {
                rect,
                offset: args.offset,
            },
        );
        if self.faults.corrupt_transfers > 0 {
            self.corrupt_host_copy(id, generation, rect, stride);
        }
        Ok(Response::OkNoData)
    }

    /// The `corrupt_transfers` fault, after a transfer of `rect` into the
    /// host copy of 2D resource `id` (rows `stride` bytes apart): XORs the
    /// rect's first byte with 0xff. The transfer itself has succeeded
    /// either way; if the renderer cannot do it, the fault stays armed.
    fn corrupt_host_copy(&mut self, id: u32, generation: u64, rect: Rect2d, stride: u64) {
        let pixel = Rect2d {
            width: 1,
            height: 1,
            ..rect
        };
        let bpp = format::BYTES_PER_PIXEL;
        let mut bytes = [0u8; format::BYTES_PER_PIXEL as usize];
        let flipped = self
            .renderer
            .read_host_copy(id, pixel, &mut bytes, bpp)
            .and_then(|()| {
                bytes[0] ^= 0xff;
                self.renderer.write_host_copy(id, pixel, &bytes, bpp)
            });
        if let Err(e) = flipped {
            warn!("resource {id}: injected transfer corruption failed: {e}");
            return;
        }
        self.host_copy_written(id);
        let host_offset = u64::from(rect.y) * stride + u64::from(rect.x) * u64::from(bpp);
        warn!("resource {id}: injected fault: host copy byte {host_offset} flipped after transfer");
        self.faults.corrupt_transfers -= 1;
        self.counters.faults_injected += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Fault {
                fault: InjectedFault::CorruptTransfer { host_offset },
            },
        );
    }

    fn check_scanout_id(&self, scanout: u32) -> Result<(), Failure> {
        if (scanout as usize) < self.scanouts.len() {
            Ok(())
        } else {
            Err(fail(
                ErrorCode::InvalidScanoutId,
                format!("scanout {scanout} does not exist"),
            ))
        }
    }

    /// What SET_SCANOUT and SET_SCANOUT_BLOB check first: the scanout must
    /// exist; resource 0 turns it off (`None`); any other resource must be
    /// live and attached.
    fn scanout_resource(
        &mut self,
        scanout: u32,
        id: u32,
        name: &'static str,
    ) -> Result<Option<ResourceKind>, Failure> {
        self.check_scanout_id(scanout)?;
        if id == 0 {
            self.disable_scanout(scanout);
            return Ok(None);
        }
        self.attached(id, name).map(Some)
    }

    fn set_scanout(&mut self, args: &wire::SetScanout, name: &'static str) -> CmdResult {
        let (scanout, id) = (args.scanout_id, args.resource_id);
        let Some(kind) = self.scanout_resource(scanout, id, name)? else {
            return Ok(Response::OkNoData);
        };
        let ResourceKind::TwoD { width, height, .. } = kind else {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: blobs go on a scanout with SET_SCANOUT_BLOB"),
            ));
        };
        let rect: Rect2d = args.r.into();
        Self::check_rect(id, rect, width, height)?;
        if rect.width == 0 || rect.height == 0 {
            return Ok(self.disable_scanout(scanout));
        }
        self.show(scanout, ScanoutSource::Resource2d { id, rect });
        Ok(Response::OkNoData)
    }

    fn set_scanout_blob(&mut self, args: &wire::SetScanoutBlob, name: &'static str) -> CmdResult {
        let (scanout, id) = (args.scanout_id, args.resource_id);
        let Some(kind) = self.scanout_resource(scanout, id, name)? else {
            return Ok(Response::OkNoData);
        };
        let ResourceKind::GuestBlob { size, .. } = kind else {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: SET_SCANOUT_BLOB needs a blob"),
            ));
        };
        if !format::is_valid(args.format) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: unknown format {}", args.format),
            ));
        }
        let rect: Rect2d = args.r.into();
        Self::check_rect(id, rect, args.width, args.height)?;
        let (stride, offset) = (args.strides[0], args.offsets[0]);
        // The last byte the scanout reads must be inside the blob.
        let row = u64::from(args.width) * u64::from(format::BYTES_PER_PIXEL);
        let end = u64::from(args.height)
            .checked_sub(1)
            .and_then(|rows| rows.checked_mul(u64::from(stride)))
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(u64::from(offset)));
        if row > u64::from(stride) || end.is_none_or(|end| end > size) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: {}x{} stride {stride} offset {offset} does not fit {size} bytes",
                    args.width, args.height
                ),
            ));
        }
        if rect.width == 0 || rect.height == 0 {
            return Ok(self.disable_scanout(scanout));
        }
        self.show(
            scanout,
            ScanoutSource::Blob {
                id,
                rect,
                stride,
                offset,
            },
        );
        Ok(Response::OkNoData)
    }

    fn show(&mut self, scanout: u32, source: ScanoutSource) {
        let id = source.resource_id();
        let rect = source.rect();
        self.scanouts[scanout as usize] = Some(source);
        if let Some(d) = self.display.as_mut() {
            d.scanout(scanout, rect.width, rect.height);
        }
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        self.trace.record(
            id,
            generation,
            EventKind::Scanout {
                scanout_id: scanout,
                enabled: true,
            },
        );
    }

    fn disable_scanout(&mut self, scanout: u32) -> Response {
        if let Some(source) = self.scanouts[scanout as usize].take() {
            let id = source.resource_id();
            let generation = self.resources.get(&id).map_or(0, |r| r.generation);
            self.trace.record(
                id,
                generation,
                EventKind::Scanout {
                    scanout_id: scanout,
                    enabled: false,
                },
            );
        }
        if let Some(d) = self.display.as_mut() {
            d.scanout(scanout, 0, 0);
        }
        Response::OkNoData
    }

    fn flush(&mut self, id: u32, rect: Rect2d, name: &'static str) -> CmdResult {
        let kind = self.attached(id, name)?;
        let (width, height) = match kind {
            ResourceKind::TwoD { width, height, .. } => (width, height),
            // A blob has no size in pixels of its own; scanouts clip below.
            ResourceKind::GuestBlob { .. } => (u32::MAX, u32::MAX),
        };
        Self::check_rect(id, rect, width, height)?;
        self.counters.flushes += 1;
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        self.trace.record(id, generation, EventKind::Flush { rect });
        if self.display.is_none() {
            return Ok(Response::OkNoData);
        }
        for scanout in 0..self.scanouts.len() {
            let Some(source) = self.scanouts[scanout].filter(|s| s.resource_id() == id) else {
                continue;
            };
            if let Err(f) = self.update_scanout(scanout as u32, source, rect) {
                limited_warn!(
                    self.log_limit,
                    "scanout update",
                    "flush of resource {id} to scanout {scanout}: {}",
                    f.why
                );
            }
        }
        Ok(Response::OkNoData)
    }

    /// Sends the part of `source` inside `flushed` (resource coordinates) to
    /// the display.
    fn update_scanout(
        &mut self,
        scanout: u32,
        source: ScanoutSource,
        flushed: Rect2d,
    ) -> Result<(), Failure> {
        let shown = source.rect();
        let x0 = flushed.x.max(shown.x);
        let y0 = flushed.y.max(shown.y);
        let x1 = (flushed.x.saturating_add(flushed.width)).min(shown.x + shown.width);
        let y1 = (flushed.y.saturating_add(flushed.height)).min(shown.y + shown.height);
        if x0 >= x1 || y0 >= y1 {
            return Ok(());
        }
        let rect = Rect2d {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        };
        let row = rect.width as usize * format::BYTES_PER_PIXEL as usize;
        let mut kept = std::mem::take(&mut self.display_pixels);
        // Every byte is overwritten below; zeroing is only for growing.
        kept.resize(kept.len().max(row * rect.height as usize), 0);
        let result = self.send_update(scanout, source, rect, row, &mut kept);
        if kept.len() <= MAX_KEPT_DISPLAY_PIXELS {
            self.display_pixels = kept;
        }
        result
    }

    /// [`GpuDevice::update_scanout`] with `rect` clipped to what is shown,
    /// read into `buffer` (at least `row * rect.height` bytes).
    fn send_update(
        &mut self,
        scanout: u32,
        source: ScanoutSource,
        rect: Rect2d,
        row: usize,
        buffer: &mut [u8],
    ) -> Result<(), Failure> {
        let shown = source.rect();
        let pixels = &mut buffer[..row * rect.height as usize];
        match source {
            ScanoutSource::Resource2d { id, .. } => self
                .renderer
                .read_host_copy(id, rect, pixels, row as u32)
                .map_err(|e| fail(ErrorCode::Unspec, e.to_string()))?,
            ScanoutSource::Blob {
                id, stride, offset, ..
            } => {
                let (Some(mem), Some(Backing::Attached { extents, .. })) = (
                    self.mem.as_ref(),
                    self.resources.get(&id).map(|r| &r.backing),
                ) else {
                    return Ok(());
                };
                for (y, line) in (rect.y..rect.y + rect.height).zip(pixels.chunks_exact_mut(row)) {
                    let start = u64::from(offset)
                        + u64::from(y) * u64::from(stride)
                        + u64::from(rect.x) * u64::from(format::BYTES_PER_PIXEL);
                    memory::read_backing(&**mem, extents, start, line)
                        .map_err(|e| fail(ErrorCode::Unspec, e.to_string()))?;
                }
            }
        }
        let on_screen = Rect2d {
            x: rect.x - shown.x,
            y: rect.y - shown.y,
            ..rect
        };
        if let Some(d) = self.display.as_mut() {
            d.update(scanout, on_screen, pixels);
        }
        Ok(())
    }

    fn assign_uuid(&mut self, id: u32, name: &'static str) -> CmdResult {
        let seed = self.uuid_seed;
        let res = self.live(id, name)?;
        let uuid = *res.uuid.get_or_insert_with(|| {
            let mut bytes =
                xxhash_rust::xxh3::xxh3_128_with_seed(&id.to_le_bytes(), seed).to_le_bytes();
            // RFC 4122 version 4, variant 1.
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            bytes
        });
        Ok(Response::OkResourceUuid(uuid))
    }

    fn update_cursor(&mut self, args: &wire::UpdateCursor, name: &'static str) -> CmdResult {
        let pos = args.pos;
        self.check_scanout_id(pos.scanout_id)?;
        if args.resource_id == 0 {
            if let Some(d) = self.display.as_mut() {
                d.cursor_hide(pos.scanout_id);
            }
            return Ok(Response::OkNoData);
        }
        let id = args.resource_id;
        let kind = self.attached(id, name)?;
        if !matches!(
            kind,
            ResourceKind::TwoD {
                width: CURSOR_SIZE,
                height: CURSOR_SIZE,
                ..
            }
        ) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: a cursor must be a {CURSOR_SIZE}x{CURSOR_SIZE} 2D resource"
                ),
            ));
        }
        if self.display.is_none() {
            return Ok(Response::OkNoData);
        }
        let full = Rect2d {
            x: 0,
            y: 0,
            width: CURSOR_SIZE,
            height: CURSOR_SIZE,
        };
        let mut image = vec![0u8; (CURSOR_SIZE * CURSOR_SIZE * format::BYTES_PER_PIXEL) as usize];
        self.renderer
            .read_host_copy(id, full, &mut image, CURSOR_SIZE * format::BYTES_PER_PIXEL)
            .map_err(|e| fail(ErrorCode::Unspec, e.to_string()))?;
        if let Some(d) = self.display.as_mut() {
            d.cursor_update(pos.scanout_id, pos.x, pos.y, args.hot_x, args.hot_y, &image);
        }
        Ok(Response::OkNoData)
    }

    fn move_cursor(&mut self, args: &wire::UpdateCursor) {
        let pos = args.pos;
        if pos.scanout_id as usize >= self.scanouts.len() {
            debug!("move_cursor: scanout {} does not exist", pos.scanout_id);
            return;
        }
        if let Some(d) = self.display.as_mut() {
            d.cursor_move(pos.scanout_id, pos.x, pos.y);
        }
    }

    /// Events after `after`, optionally for one resource.
    pub fn events(&self, after: u64, resource_id: Option<u32>) -> Vec<Event> {
        self.trace.since(after, resource_id)
    }
}

/// Self-checks, for tests and fuzzing.
impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    /// Cross-checks the device's bookkeeping: the host memory charged is
    /// exactly what the live resources and their backing entries hold; an
    /// attached backing's length is the sum of its extents; the
    /// page-ownership index holds exactly the attached backings (see
    /// `PageOwners::check_consistency`); every scanout shows a live
    /// resource of the kind it was set up with, inside its bounds. Walks
    /// every claimed page: not for the request path.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut charged = 0u64;
        let mut attached = BTreeMap::new();
        for (&id, res) in &self.resources {
            charged += res.charged;
            if let Backing::Attached { extents, len } = &res.backing {
                charged += extents.len() as u64 * ENTRY_OVERHEAD;
                let sum: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
                if sum != *len {
                    return Err(format!("resource {id}: backing of {sum} bytes says {len}"));
                }
                attached.insert(id, extents.as_slice());
            }
        }
        if charged != self.host_memory_used {
            return Err(format!(
                "{} bytes charged, resources hold {charged}",
                self.host_memory_used
            ));
        }
        self.owners.check_consistency(&attached)?;
        for (scanout, source) in self.scanouts.iter().enumerate() {
            let Some(source) = source else { continue };
            let id = source.resource_id();
            let kind = self.resources.get(&id).map(|r| r.kind);
            let rect = source.rect();
            let fits = match (source, kind) {
                (
                    ScanoutSource::Resource2d { .. },
                    Some(ResourceKind::TwoD { width, height, .. }),
                ) => Self::check_rect(id, rect, width, height).is_ok(),
                (ScanoutSource::Blob { .. }, Some(ResourceKind::GuestBlob { .. })) => true,
                _ => false,
            };
            if !fits {
                return Err(format!(
                    "scanout {scanout} shows {source:?}, resource is {kind:?}"
                ));
            }
        }
        Ok(())
    }
}
