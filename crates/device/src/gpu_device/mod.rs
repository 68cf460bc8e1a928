//! The virtio-gpu device model, [`GpuDevice`]: what the guest's requests
//! do. Independent of vhost-user and of whoever inspects it: the daemon
//! hands it decoded requests and guest memory and writes back its
//! responses; the control plane reads it through [`ResourceSnapshot`].
//!
//! By concern:
//! - here: the device itself, its limits, request dispatch, memory-table
//!   changes, reset, and the checks every command starts with;
//! - `resources.rs`: the resource table and the backing state machine
//!   (create, attach, detach, transfer, unref), host memory accounting
//!   and the injected device faults;
//! - `scanouts.rs`: scanouts, display updates and the cursor;
//! - `inspect.rs`: a resource seen from outside, as typed data (its state,
//!   its host copy in bands, its backing's bytes).

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuswap_protocol::wire::MAX_SCANOUTS;
use gpuswap_protocol::{ctrl_type, Command, DecodeError, ErrorCode, Request, Response};
use vm_memory::GuestMemoryBackend;

use crate::display::Display;
use crate::limited_warn;
use crate::log_limit::LogLimit;
use crate::memory::{self, PageOwners};
use crate::renderer::Renderer;
use crate::trace::{Counters, DetachReason, Event, EventKind, Trace, Violation};

mod inspect;
mod resources;
mod scanouts;

pub use inspect::ResourceSnapshot;
pub use resources::ResourceKind;
use resources::{attached_backings, Backing, Resource};
use scanouts::ScanoutSource;

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

/// Faults the control socket (or the daemon's command line) can arm in the
/// device, to check that a harness notices bad data. Each one that fires
/// is counted in `faults_injected` and traced as a `fault` event on its
/// resource. (Completion delays are the daemon's: the device answers at
/// once, the queue handler holds the completion back.)
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
