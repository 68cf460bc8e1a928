//! The reference model of gpuswap-device's resource/backing state machine,
//! and the property-test loop that holds a device to it.
//!
//! One model serves every layer: `crates/device/tests/model.rs` drives a
//! `GpuDevice` with it directly, `crates/daemon/tests/state_machine_model.rs`
//! drives the daemon over the vhost-user socket and reads the state back
//! through the control socket. Each implements [`DeviceUnderTest`] for its
//! layer and calls [`run`]; the rules live here once.
//!
//! What the model knows (the rules of `crates/device/src/gpu_device/`):
//!
//! - 2D resources start detached; guest blobs start attached to their
//!   CREATE_BLOB entries, or detached when created with none.
//! - ATTACH_BACKING on an attached resource (`DoubleAttach`) and
//!   DETACH_BACKING on a detached one (`DoubleDetach`) are `ERR_UNSPEC` and
//!   change nothing; so are transfer, flush and scanout of a detached
//!   resource (`UseWhileDetached`). An id that is not live is
//!   `ERR_INVALID_RESOURCE_ID` (`UnknownResource`), a live one created again
//!   is too (`DuplicateResource`); id 0 is refused without a violation.
//! - Every successful attach counts a generation; UNREF and reset detach
//!   implicitly (and say so in the trace).
//! - A backing overlapping another live backing is attached anyway and
//!   recorded (`OverlappingBacking`).
//! - A blob's backing must cover its size; armed attach faults fail the next
//!   attaches with `ERR_OUT_OF_MEMORY` before anything else is checked but
//!   the state.
//! - Host memory: each resource charges its overhead (plus its host copy for
//!   2D), each attached entry its own; past the budget, `ERR_OUT_OF_MEMORY`.
//! - Transfers copy rows from the backing at the request's offset into the
//!   host copy; flushes send the flushed part of what the scanout shows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use gpuswap_protocol::wire::Rect;
use gpuswap_protocol::{ctrl_type, format, ErrorCode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::rng::pattern;

/// Guest page size.
pub const PAGE: u64 = 4096;
/// Guest pages the model covers, from its base address: the device under
/// test must map them as guest RAM for the guest's writes and the backings.
pub const PAGES: u64 = 64;
/// The pixel format of every 2D resource and blob scanout.
pub const FORMAT: u32 = format::B8G8R8X8_UNORM;

/// A guest memory entry: (guest address, length).
pub type Extent = (u64, u32);

// ---- What a test generates ----------------------------------------------

/// Which resource an op names.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The n-th live resource (modulo their number; id n + 1 if none).
    Live(usize),
    /// This id, live or not (0 and 77 are never live).
    Raw(u32),
}

/// Which guest pages an op hands the device.
#[derive(Debug, Clone)]
pub enum Pages {
    /// `count` pages from page `first`, as one entry or one entry per page.
    Fresh { first: u64, count: u64, split: bool },
    /// The entries of the n-th attached resource (fresh pages if none).
    Of(usize),
}

/// Which rect of an image an op names.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Full,
    Middle,
    Corner,
}

impl Part {
    /// This part of a `w` x `h` image.
    pub fn of(self, (w, h): (u32, u32)) -> Rect {
        match self {
            Part::Full => rect(0, 0, w, h),
            Part::Middle => rect(w / 4, h / 4, w / 2, h / 2),
            Part::Corner => rect(0, 0, w / 2, h / 2),
        }
    }
}

/// One step of a generated sequence, before the model resolves it against
/// the live resources.
#[derive(Debug, Clone)]
pub enum Op {
    Create2d {
        id: u32,
        w: u32,
        h: u32,
    },
    CreateBlob {
        id: u32,
        size: u64,
        entries: Option<Pages>,
    },
    Attach {
        id: Target,
        pages: Pages,
    },
    Detach {
        id: Target,
    },
    Transfer {
        id: Target,
        part: Part,
    },
    Flush {
        id: Target,
        part: Part,
    },
    SetScanout {
        id: Target,
        part: Part,
    },
    SetScanoutBlob {
        id: Target,
        part: Part,
    },
    Unref {
        id: Target,
    },
    /// The guest writes a page (no request).
    Scribble {
        page: u64,
        seed: u64,
    },
    /// Arms the attach fault for the next `n` attaches.
    FailAttaches(u32),
    /// Device reset.
    Reset,
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![Just(Part::Full), Just(Part::Middle), Just(Part::Corner)]
}

/// Ids 1..6, with now and then one that is never live.
fn raw_id() -> impl Strategy<Value = u32> {
    prop_oneof![10 => 1..6u32, 1 => Just(0u32), 1 => Just(77u32)]
}

/// Mostly live resources, so that most steps get past the id check.
fn target() -> impl Strategy<Value = Target> {
    prop_oneof![3 => (0..8usize).prop_map(Target::Live), 1 => raw_id().prop_map(Target::Raw)]
}

fn pages() -> impl Strategy<Value = Pages> {
    prop_oneof![
        3 => (0..PAGES, 1..=3u64, any::<bool>()).prop_map(|(first, count, split)| {
            Pages::Fresh {
                first: first.min(PAGES - count),
                count,
                split,
            }
        }),
        1 => (0..8usize).prop_map(Pages::Of),
    ]
}

/// One op, weighted towards attach/detach cycles.
pub fn op() -> impl Strategy<Value = Op> {
    let widths = prop::sample::select(vec![16u32, 32, 64]);
    let heights = prop::sample::select(vec![8u32, 16, 32]);
    let sizes = prop::sample::select(vec![1000u64, 4096, 6000, 8192]);
    prop_oneof![
        6 => (raw_id(), widths, heights).prop_map(|(id, w, h)| Op::Create2d { id, w, h }),
        4 => (raw_id(), sizes, prop::option::of(pages()))
            .prop_map(|(id, size, entries)| Op::CreateBlob { id, size, entries }),
        12 => (target(), pages()).prop_map(|(id, pages)| Op::Attach { id, pages }),
        8 => target().prop_map(|id| Op::Detach { id }),
        6 => (target(), part()).prop_map(|(id, part)| Op::Transfer { id, part }),
        4 => (target(), part()).prop_map(|(id, part)| Op::Flush { id, part }),
        2 => (target(), part()).prop_map(|(id, part)| Op::SetScanout { id, part }),
        2 => (target(), part()).prop_map(|(id, part)| Op::SetScanoutBlob { id, part }),
        3 => target().prop_map(|id| Op::Unref { id }),
        2 => (0..PAGES, any::<u64>()).prop_map(|(page, seed)| Op::Scribble { page, seed }),
        1 => (0..3u32).prop_map(Op::FailAttaches),
        1 => Just(Op::Reset),
    ]
}

/// Sequences of `len` ops.
pub fn ops(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), len)
}

// ---- What the device under test is asked ---------------------------------

/// How SET_SCANOUT_BLOB lays an image out in a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLayout {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub offset: u32,
}

/// The layout used for a blob of `size`: 16 pixels wide, rows 128 bytes
/// apart from byte 64, as many rows (up to 16) as fit.
pub fn blob_layout(size: u64) -> BlobLayout {
    let height = ((size - 64 - 64) / 128 + 1).min(16) as u32;
    BlobLayout {
        width: 16,
        height,
        stride: 128,
        offset: 64,
    }
}

/// A control-queue request, on scanout 0, in [`FORMAT`], blobs in guest
/// memory and without flags; unfenced unless the test adds a fence.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Create2d {
        id: u32,
        width: u32,
        height: u32,
    },
    CreateBlob {
        id: u32,
        size: u64,
        entries: Vec<Extent>,
    },
    Attach {
        id: u32,
        entries: Vec<Extent>,
    },
    Detach {
        id: u32,
    },
    Transfer {
        id: u32,
        rect: Rect,
        offset: u64,
    },
    Flush {
        id: u32,
        rect: Rect,
    },
    SetScanout {
        id: u32,
        rect: Rect,
    },
    SetScanoutBlob {
        id: u32,
        rect: Rect,
        layout: BlobLayout,
    },
    Unref {
        id: u32,
    },
}

impl Request {
    /// The request's type code.
    pub fn type_code(&self) -> u32 {
        match self {
            Request::Create2d { .. } => ctrl_type::RESOURCE_CREATE_2D,
            Request::CreateBlob { .. } => ctrl_type::RESOURCE_CREATE_BLOB,
            Request::Attach { .. } => ctrl_type::RESOURCE_ATTACH_BACKING,
            Request::Detach { .. } => ctrl_type::RESOURCE_DETACH_BACKING,
            Request::Transfer { .. } => ctrl_type::TRANSFER_TO_HOST_2D,
            Request::Flush { .. } => ctrl_type::RESOURCE_FLUSH,
            Request::SetScanout { .. } => ctrl_type::SET_SCANOUT,
            Request::SetScanoutBlob { .. } => ctrl_type::SET_SCANOUT_BLOB,
            Request::Unref { .. } => ctrl_type::RESOURCE_UNREF,
        }
    }

    /// The request's name, as the trace gives it.
    pub fn name(&self) -> &'static str {
        ctrl_type::name(self.type_code())
    }
}

/// One thing done to the device under test.
#[derive(Clone)]
pub enum Action {
    /// The guest writes `data` at guest address `addr` (no request).
    Write { addr: u64, data: Vec<u8> },
    /// A control-queue request.
    Send(Request),
    /// Arms the attach fault: the next `n` ATTACH_BACKINGs fail.
    FailAttaches(u32),
    /// Device reset.
    Reset,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Write { addr, data } => write!(f, "Write {} bytes at {addr:#x}", data.len()),
            Action::Send(req) => write!(f, "{req:?}"),
            Action::FailAttaches(n) => write!(f, "FailAttaches({n})"),
            Action::Reset => write!(f, "Reset"),
        }
    }
}

// ---- What the device must answer and record ---------------------------------

/// A broken protocol rule, as the trace records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    UseWhileDetached,
    DoubleAttach,
    DoubleDetach,
    OverlappingBacking {
        other: u32,
    },
    UnknownResource,
    DuplicateResource,
    /// One the model never predicts (by its trace name).
    Other(String),
}

impl Violation {
    /// From the trace's name for it (and `other` for overlaps).
    pub fn from_name(name: &str, other: Option<u32>) -> Violation {
        match (name, other) {
            ("use_while_detached", _) => Violation::UseWhileDetached,
            ("double_attach", _) => Violation::DoubleAttach,
            ("double_detach", _) => Violation::DoubleDetach,
            ("overlapping_backing", Some(other)) => Violation::OverlappingBacking { other },
            ("unknown_resource", _) => Violation::UnknownResource,
            ("duplicate_resource", _) => Violation::DuplicateResource,
            (name, _) => Violation::Other(name.to_string()),
        }
    }
}

/// Why a backing went away, as the trace records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachReason {
    Command,
    Unref,
    Reset,
    /// One the model never predicts (by its trace name).
    Other(String),
}

impl DetachReason {
    /// From the trace's name for it.
    pub fn from_name(name: &str) -> DetachReason {
        match name {
            "command" => DetachReason::Command,
            "unref" => DetachReason::Unref,
            "reset" => DetachReason::Reset,
            name => DetachReason::Other(name.to_string()),
        }
    }
}

/// The trace events the model predicts, in order (violations of one
/// request in any order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// (resource, violation, command name).
    pub violations: Vec<(u32, Violation, String)>,
    /// Resources an injected attach fault hit.
    pub faults: Vec<u32>,
    /// (resource, reason) of every detach, explicit or implicit.
    pub detaches: Vec<(u32, DetachReason)>,
    /// (resource, generation) of every successful attach.
    pub attaches: Vec<(u32, u64)>,
}

/// What scanout 0's display is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// The scanout's mode; 0 x 0 turns it off.
    Scanout { width: u32, height: u32 },
    /// Pixels of `rect` (scanout coordinates), rows packed.
    Update { rect: Rect, pixels: Vec<u8> },
}

/// A live resource as the device reports it (`resources` on the control
/// socket; in process, the device's snapshot read whole), hashes by the
/// test's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: u32,
    /// "2d" or "blob".
    pub kind: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Bytes of content: the host copy's (2D) or the blob's.
    pub size: u64,
    /// "attached" or "detached".
    pub backing: String,
    pub generation: u64,
    pub entries: usize,
    pub backing_bytes: u64,
    /// Hash of the host copy (2D only).
    pub host_hash: Option<String>,
    /// Hash of the first `size` bytes of the backing (attached only).
    pub backing_hash: Option<String>,
    pub scanouts: Vec<u32>,
}

/// What one action must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// The response to a request (OK for the other actions).
    pub response: Result<(), ErrorCode>,
    pub events: Events,
    pub shown: Vec<Shown>,
}

// ---- The model ------------------------------------------------------------

/// Host memory accounting: the budget and what each thing costs (the
/// device's `RESOURCE_OVERHEAD` and `ENTRY_OVERHEAD`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_host_memory: u64,
    pub resource_overhead: u64,
    pub entry_overhead: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TwoD { w: u32, h: u32 },
    Blob { size: u64 },
}

#[derive(Debug, Clone)]
struct Resource {
    kind: Kind,
    backing: Option<Vec<Extent>>,
    generation: u64,
    /// The expected host copy (2D only).
    host: Vec<u8>,
}

/// What scanout 0 shows: resource, shown rect, and for blobs the layout.
#[derive(Debug, Clone, Copy)]
struct Scanout {
    id: u32,
    rect: Rect,
    blob_layout: Option<BlobLayout>,
}

/// The device as it should be: resources, scanout 0, guest memory.
pub struct Model {
    /// Guest address of the model's page 0.
    base: u64,
    res: BTreeMap<u32, Resource>,
    scanout: Option<Scanout>,
    guest: Vec<u8>,
    fail_attaches: u32,
    used: u64,
    budget: Budget,
    /// Ops resolved so far: seeds the content of fresh pages.
    step: u64,
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn backing_len(extents: &[Extent]) -> u64 {
    extents.iter().map(|&(_, l)| u64::from(l)).sum()
}

/// The bytes of `r` (4-byte pixels, rows packed) in an image of rows
/// `stride` bytes apart starting at byte `base`: what a display is sent of
/// it.
pub fn crop(image: &[u8], base: usize, stride: usize, r: Rect) -> Vec<u8> {
    let row = r.width as usize * 4;
    let mut out = Vec::with_capacity(row * r.height as usize);
    for y in r.y..r.y + r.height {
        let start = base + y as usize * stride + r.x as usize * 4;
        out.extend_from_slice(&image[start..start + row]);
    }
    out
}

/// Whether `r` lies inside a `width` x `height` image.
fn inside(r: Rect, width: u32, height: u32) -> bool {
    let fits = |pos: u32, len: u32, limit: u32| pos.checked_add(len).is_some_and(|e| e <= limit);
    fits(r.x, r.width, width) && fits(r.y, r.height, height)
}

const BLANK: Shown = Shown::Scanout {
    width: 0,
    height: 0,
};

impl Model {
    /// No resources, [`PAGES`] zeroed guest pages from guest address
    /// `base`, nothing charged yet.
    pub fn new(base: u64, budget: Budget) -> Model {
        Model {
            base,
            res: BTreeMap::new(),
            scanout: None,
            guest: vec![0; (PAGES * PAGE) as usize],
            fail_attaches: 0,
            used: 0,
            budget,
            step: 0,
        }
    }

    /// Host memory the device should have charged.
    pub fn host_memory_used(&self) -> u64 {
        self.used
    }

    /// The live resource ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.res.keys().copied().collect()
    }

    /// Every live resource as the device should report it, hashed by `hash`.
    pub fn views(&self, hash: impl Fn(&[u8]) -> String) -> Vec<View> {
        self.res
            .iter()
            .map(|(&id, r)| {
                let (kind, width, height, size) = match r.kind {
                    Kind::TwoD { w, h } => ("2d", Some(w), Some(h), u64::from(w * h * 4)),
                    Kind::Blob { size } => ("blob", None, None, size),
                };
                let backing_hash = r.backing.as_ref().map(|entries| {
                    let len = backing_len(entries).min(size) as usize;
                    hash(
                        &self
                            .read(entries, 0, len)
                            .expect("backing in the model's RAM"),
                    )
                });
                View {
                    id,
                    kind: kind.into(),
                    width,
                    height,
                    size,
                    backing: if r.backing.is_some() {
                        "attached"
                    } else {
                        "detached"
                    }
                    .into(),
                    generation: r.generation,
                    entries: r.backing.as_ref().map_or(0, Vec::len),
                    backing_bytes: r.backing.as_deref().map_or(0, backing_len),
                    host_hash: matches!(r.kind, Kind::TwoD { .. }).then(|| hash(&r.host)),
                    backing_hash,
                    scanouts: if self.scanout.is_some_and(|s| s.id == id) {
                        vec![0]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }

    // ---- Resolving ops ----

    /// What `op` does, as actions on the device in order: the guest first
    /// writes fresh content into pages it hands over, then the request.
    pub fn actions(&mut self, op: &Op) -> Vec<Action> {
        self.step += 1;
        let mut out = Vec::new();
        let req = match *op {
            Op::Create2d { id, w, h } => Request::Create2d {
                id,
                width: w,
                height: h,
            },
            Op::CreateBlob {
                id,
                size,
                ref entries,
            } => Request::CreateBlob {
                id,
                size,
                entries: entries
                    .as_ref()
                    .map_or_else(Vec::new, |p| self.entries(p, &mut out)),
            },
            Op::Attach { id, ref pages } => Request::Attach {
                id: self.id(id),
                entries: self.entries(pages, &mut out),
            },
            Op::Detach { id } => Request::Detach { id: self.id(id) },
            Op::Transfer { id, part } => {
                let id = self.id(id);
                let rect = part.of(self.image_size(id));
                let offset = match self.kind(id) {
                    Some(Kind::TwoD { w, .. }) => {
                        u64::from(rect.y) * u64::from(w) * 4 + u64::from(rect.x) * 4
                    }
                    _ => 0,
                };
                Request::Transfer { id, rect, offset }
            }
            Op::Flush { id, part } => {
                let id = self.id(id);
                let rect = part.of(self.image_size(id));
                Request::Flush { id, rect }
            }
            Op::SetScanout { id, part } => {
                let id = self.id(id);
                let rect = part.of(self.image_size(id));
                Request::SetScanout { id, rect }
            }
            Op::SetScanoutBlob { id, part } => {
                let id = self.id(id);
                let size = match self.kind(id) {
                    Some(Kind::Blob { size }) => size,
                    _ => 4096,
                };
                let layout = blob_layout(size);
                let rect = part.of((layout.width, layout.height));
                Request::SetScanoutBlob { id, rect, layout }
            }
            Op::Unref { id } => Request::Unref { id: self.id(id) },
            Op::Scribble { page, seed } => {
                let addr = self.base + page * PAGE;
                out.push(Action::Write {
                    addr,
                    data: pattern(PAGE as usize, seed),
                });
                return out;
            }
            Op::FailAttaches(n) => return vec![Action::FailAttaches(n)],
            Op::Reset => return vec![Action::Reset],
        };
        out.push(Action::Send(req));
        out
    }

    /// The entries for `pages`, and the guest's writes of fresh content
    /// into them.
    fn entries(&self, pages: &Pages, writes: &mut Vec<Action>) -> Vec<Extent> {
        let fresh = |first: u64, count: u64, split: bool| -> Vec<Extent> {
            let addr = |page: u64| self.base + page * PAGE;
            if split {
                (first..first + count)
                    .map(|p| (addr(p), PAGE as u32))
                    .collect()
            } else {
                vec![(addr(first), (count * PAGE) as u32)]
            }
        };
        let entries = match *pages {
            Pages::Fresh {
                first,
                count,
                split,
            } => fresh(first, count, split),
            Pages::Of(n) => {
                let attached: Vec<&Vec<Extent>> = self
                    .res
                    .values()
                    .filter_map(|r| r.backing.as_ref())
                    .collect();
                match attached.len() {
                    0 => fresh(n as u64 * 7, 2, false),
                    len => attached[n % len].clone(),
                }
            }
        };
        for &(addr, len) in &entries {
            let data = pattern(len as usize, self.step.wrapping_mul(1000) + addr);
            writes.push(Action::Write { addr, data });
        }
        entries
    }

    fn id(&self, target: Target) -> u32 {
        match target {
            Target::Live(n) => match self.res.len() {
                0 => n as u32 + 1,
                len => *self.res.keys().nth(n % len).expect("n % len < len"),
            },
            Target::Raw(id) => id,
        }
    }

    fn kind(&self, id: u32) -> Option<Kind> {
        self.res.get(&id).map(|r| r.kind)
    }

    /// The size in pixels of what a resource shows: a 2D resource's own, a
    /// blob's scanout layout (anything for ids that are not live).
    fn image_size(&self, id: u32) -> (u32, u32) {
        match self.kind(id) {
            Some(Kind::TwoD { w, h }) => (w, h),
            Some(Kind::Blob { size }) => {
                let l = blob_layout(size);
                (l.width, l.height)
            }
            None => (16, 8),
        }
    }

    // ---- Applying actions ----

    /// Applies `action` to the model: what the device must answer, record
    /// and show.
    pub fn apply(&mut self, action: &Action) -> Expect {
        let mut x = Expect {
            response: Ok(()),
            events: Events::default(),
            shown: Vec::new(),
        };
        x.response = match action {
            Action::Write { addr, data } => {
                self.write(*addr, data);
                Ok(())
            }
            Action::FailAttaches(n) => {
                self.fail_attaches = *n;
                Ok(())
            }
            Action::Reset => {
                self.reset(&mut x);
                Ok(())
            }
            Action::Send(req) => {
                let response = self.request(req, &mut x);
                for v in &mut x.events.violations {
                    v.2 = req.name().to_string();
                }
                response
            }
        };
        x
    }

    fn request(&mut self, req: &Request, x: &mut Expect) -> Result<(), ErrorCode> {
        match *req {
            Request::Create2d { id, width, height } => self.create_2d(id, width, height, x),
            Request::CreateBlob {
                id,
                size,
                ref entries,
            } => self.create_blob(id, size, entries, x),
            Request::Attach { id, ref entries } => self.attach(id, entries, x),
            Request::Detach { id } => self.detach(id, x),
            Request::Transfer { id, rect, offset } => self.transfer(id, rect, offset, x),
            Request::Flush { id, rect } => self.flush(id, rect, x),
            Request::SetScanout { id, rect } => self.set_scanout(id, rect, x),
            Request::SetScanoutBlob { id, rect, layout } => {
                self.set_scanout_blob(id, rect, layout, x)
            }
            Request::Unref { id } => self.unref(id, x),
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let at = (addr - self.base) as usize;
        self.guest[at..at + data.len()].copy_from_slice(data);
    }

    fn read(&self, extents: &[Extent], offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut flat = Vec::new();
        for &(addr, l) in extents {
            let at = (addr - self.base) as usize;
            flat.extend_from_slice(&self.guest[at..at + l as usize]);
        }
        let start = offset as usize;
        flat.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }

    fn charge(&mut self, bytes: u64) -> Result<(), ErrorCode> {
        if self.used + bytes > self.budget.max_host_memory {
            return Err(ErrorCode::OutOfMemory);
        }
        self.used += bytes;
        Ok(())
    }

    fn overlapping(&self, id: u32, extents: &[Extent]) -> BTreeSet<u32> {
        let pages_of = |ext: &[Extent]| -> BTreeSet<u64> {
            ext.iter()
                .flat_map(|&(a, l)| (a / PAGE)..(a + u64::from(l)).div_ceil(PAGE))
                .collect()
        };
        let mine = pages_of(extents);
        self.res
            .iter()
            .filter(|&(&other, _)| other != id)
            .filter_map(|(&other, r)| Some((other, r.backing.as_ref()?)))
            .filter(|(_, backing)| !pages_of(backing).is_disjoint(&mine))
            .map(|(other, _)| other)
            .collect()
    }

    fn violation(x: &mut Expect, id: u32, v: Violation) {
        x.events.violations.push((id, v, String::new()));
    }

    /// A live resource, or UnknownResource.
    fn live(&self, id: u32, x: &mut Expect) -> Result<Resource, ErrorCode> {
        match self.res.get(&id) {
            Some(r) => Ok(r.clone()),
            None => {
                Self::violation(x, id, Violation::UnknownResource);
                Err(ErrorCode::InvalidResourceId)
            }
        }
    }

    /// A live and attached resource, or the violation.
    fn attached(&self, id: u32, x: &mut Expect) -> Result<Resource, ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_none() {
            Self::violation(x, id, Violation::UseWhileDetached);
            return Err(ErrorCode::Unspec);
        }
        Ok(r)
    }

    fn new_id(&self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        if id == 0 {
            return Err(ErrorCode::InvalidResourceId);
        }
        if self.res.contains_key(&id) {
            Self::violation(x, id, Violation::DuplicateResource);
            return Err(ErrorCode::InvalidResourceId);
        }
        Ok(())
    }

    fn create_2d(&mut self, id: u32, w: u32, h: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        self.new_id(id, x)?;
        if w == 0 || h == 0 {
            return Err(ErrorCode::InvalidParameter);
        }
        let size = u64::from(w) * u64::from(h) * 4;
        self.charge(size + self.budget.resource_overhead)?;
        let res = Resource {
            kind: Kind::TwoD { w, h },
            backing: None,
            generation: 0,
            host: vec![0; size as usize],
        };
        self.res.insert(id, res);
        Ok(())
    }

    fn create_blob(
        &mut self,
        id: u32,
        size: u64,
        entries: &[Extent],
        x: &mut Expect,
    ) -> Result<(), ErrorCode> {
        self.new_id(id, x)?;
        if size == 0 {
            return Err(ErrorCode::InvalidParameter);
        }
        self.charge(self.budget.resource_overhead)?;
        let res = Resource {
            kind: Kind::Blob { size },
            backing: None,
            generation: 0,
            host: Vec::new(),
        };
        self.res.insert(id, res);
        // nr_entries 0: the blob starts detached and is attached later.
        if !entries.is_empty() {
            if let Err(e) = self.attach(id, entries, x) {
                self.destroy(id, DetachReason::Unref, x);
                return Err(e);
            }
        }
        Ok(())
    }

    fn attach(&mut self, id: u32, entries: &[Extent], x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_some() {
            Self::violation(x, id, Violation::DoubleAttach);
            return Err(ErrorCode::Unspec);
        }
        if entries.is_empty() {
            return Err(ErrorCode::InvalidParameter);
        }
        if self.fail_attaches > 0 {
            self.fail_attaches -= 1;
            x.events.faults.push(id);
            return Err(ErrorCode::OutOfMemory);
        }
        if let Kind::Blob { size } = r.kind {
            if backing_len(entries) < size {
                return Err(ErrorCode::InvalidParameter);
            }
        }
        // Repeated pages are allowed, up to the size of guest RAM.
        if backing_len(entries) > PAGES * PAGE {
            return Err(ErrorCode::InvalidParameter);
        }
        self.charge(entries.len() as u64 * self.budget.entry_overhead)?;
        let others = self.overlapping(id, entries);
        let r = self.res.get_mut(&id).expect("live");
        r.backing = Some(entries.to_vec());
        r.generation += 1;
        x.events.attaches.push((id, r.generation));
        // Recorded after the attach, which goes through.
        for other in others {
            Self::violation(x, id, Violation::OverlappingBacking { other });
        }
        Ok(())
    }

    /// Forgets a backing; whether there was one.
    fn drop_backing(&mut self, id: u32) -> bool {
        let r = self.res.get_mut(&id).expect("live");
        match r.backing.take() {
            Some(entries) => {
                self.used -= entries.len() as u64 * self.budget.entry_overhead;
                true
            }
            None => false,
        }
    }

    fn detach(&mut self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_none() {
            Self::violation(x, id, Violation::DoubleDetach);
            return Err(ErrorCode::Unspec);
        }
        self.drop_backing(id);
        x.events.detaches.push((id, DetachReason::Command));
        Ok(())
    }

    /// UNREF and reset: implicit detach, scanout off, memory released.
    fn destroy(&mut self, id: u32, reason: DetachReason, x: &mut Expect) {
        if self.drop_backing(id) {
            x.events.detaches.push((id, reason));
        }
        if self.scanout.is_some_and(|s| s.id == id) {
            self.scanout = None;
            x.shown.push(BLANK);
        }
        let r = self.res.remove(&id).expect("live");
        self.used -= self.budget.resource_overhead;
        if let Kind::TwoD { w, h } = r.kind {
            self.used -= u64::from(w) * u64::from(h) * 4;
        }
    }

    fn unref(&mut self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        self.live(id, x)?;
        self.destroy(id, DetachReason::Unref, x);
        Ok(())
    }

    fn reset(&mut self, x: &mut Expect) {
        for id in self.ids() {
            self.destroy(id, DetachReason::Reset, x);
        }
    }

    fn transfer(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        x: &mut Expect,
    ) -> Result<(), ErrorCode> {
        let r = self.attached(id, x)?;
        // A blob's content is its backing: nothing to copy.
        let Kind::TwoD { w, h } = r.kind else {
            return Ok(());
        };
        if !inside(rect, w, h) {
            return Err(ErrorCode::InvalidParameter);
        }
        if rect.width == 0 || rect.height == 0 {
            return Ok(());
        }
        // Source rows start at `offset`, `w * 4` apart, inside the backing.
        let stride = u64::from(w) * 4;
        let row = u64::from(rect.width) * 4;
        let backing = r.backing.expect("attached");
        if (u64::from(rect.height) - 1) * stride + row + offset > backing_len(&backing) {
            return Err(ErrorCode::InvalidParameter);
        }
        for y in 0..u64::from(rect.height) {
            let line = self
                .read(&backing, offset + y * stride, row as usize)
                .expect("checked above");
            let at = ((u64::from(rect.y) + y) * stride + u64::from(rect.x) * 4) as usize;
            let host = &mut self.res.get_mut(&id).expect("live").host;
            host[at..at + row as usize].copy_from_slice(&line);
        }
        Ok(())
    }

    fn flush(&mut self, id: u32, rect: Rect, x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.attached(id, x)?;
        if let Kind::TwoD { w, h } = r.kind {
            if !inside(rect, w, h) {
                return Err(ErrorCode::InvalidParameter);
            }
        }
        let Some(s) = self.scanout.filter(|s| s.id == id) else {
            return Ok(());
        };
        // What was flushed of what is shown goes to the display, placed
        // relative to the shown rect.
        let (x0, y0) = (rect.x.max(s.rect.x), rect.y.max(s.rect.y));
        let x1 = (rect.x + rect.width).min(s.rect.x + s.rect.width);
        let y1 = (rect.y + rect.height).min(s.rect.y + s.rect.height);
        if x0 >= x1 || y0 >= y1 {
            return Ok(());
        }
        let flushed = self::rect(x0, y0, x1 - x0, y1 - y0);
        let pixels = match (r.kind, s.blob_layout) {
            (Kind::TwoD { w, .. }, _) => crop(&r.host, 0, w as usize * 4, flushed),
            (Kind::Blob { size }, Some(l)) => {
                let backing = r.backing.as_ref().expect("attached");
                let image = self
                    .read(backing, 0, size as usize)
                    .expect("a blob's backing covers it");
                crop(&image, l.offset as usize, l.stride as usize, flushed)
            }
            (Kind::Blob { .. }, None) => unreachable!("blobs only show through SET_SCANOUT_BLOB"),
        };
        x.shown.push(Shown::Update {
            rect: Rect {
                x: x0 - s.rect.x,
                y: y0 - s.rect.y,
                ..flushed
            },
            pixels,
        });
        Ok(())
    }

    fn set_scanout(&mut self, id: u32, rect: Rect, x: &mut Expect) -> Result<(), ErrorCode> {
        if id == 0 {
            self.disable(x);
            return Ok(());
        }
        let r = self.attached(id, x)?;
        let Kind::TwoD { w, h } = r.kind else {
            return Err(ErrorCode::InvalidParameter);
        };
        if !inside(rect, w, h) {
            return Err(ErrorCode::InvalidParameter);
        }
        if rect.width == 0 || rect.height == 0 {
            self.disable(x);
            return Ok(());
        }
        self.show(id, rect, None, x);
        Ok(())
    }

    fn set_scanout_blob(
        &mut self,
        id: u32,
        rect: Rect,
        l: BlobLayout,
        x: &mut Expect,
    ) -> Result<(), ErrorCode> {
        if id == 0 {
            self.disable(x);
            return Ok(());
        }
        let r = self.attached(id, x)?;
        let Kind::Blob { size } = r.kind else {
            return Err(ErrorCode::InvalidParameter);
        };
        if !inside(rect, l.width, l.height) {
            return Err(ErrorCode::InvalidParameter);
        }
        // The last byte the scanout reads must be inside the blob.
        let row = u64::from(l.width) * 4;
        let end = u64::from(l.height)
            .checked_sub(1)
            .map(|rows| rows * u64::from(l.stride) + row + u64::from(l.offset));
        if row > u64::from(l.stride) || end.is_none_or(|end| end > size) {
            return Err(ErrorCode::InvalidParameter);
        }
        if rect.width == 0 || rect.height == 0 {
            self.disable(x);
            return Ok(());
        }
        self.show(id, rect, Some(l), x);
        Ok(())
    }

    fn show(&mut self, id: u32, rect: Rect, blob_layout: Option<BlobLayout>, x: &mut Expect) {
        self.scanout = Some(Scanout {
            id,
            rect,
            blob_layout,
        });
        x.shown.push(Shown::Scanout {
            width: rect.width,
            height: rect.height,
        });
    }

    fn disable(&mut self, x: &mut Expect) {
        self.scanout = None;
        x.shown.push(BLANK);
    }
}

// ---- Holding a device to the model ------------------------------------------

/// A device under test, as one layer sees it. Errors are the layer's own
/// failures (a broken transport), not device answers.
pub trait DeviceUnderTest {
    /// The guest writes `data` at guest address `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), TestCaseError>;
    /// Sends `req`: the device's answer.
    fn send(&mut self, req: &Request) -> Result<Result<(), ErrorCode>, TestCaseError>;
    /// Arms the attach fault for the next `n` attaches.
    fn fail_attaches(&mut self, n: u32) -> Result<(), TestCaseError>;
    /// Resets the device.
    fn reset(&mut self) -> Result<(), TestCaseError>;
    /// The trace's events since the previous call.
    fn events(&mut self) -> Result<Events, TestCaseError>;
    /// What scanout 0's display was sent since the previous call, if this
    /// layer sees it.
    fn shown(&mut self) -> Result<Option<Vec<Shown>>, TestCaseError>;
    /// Every live resource, in id order.
    fn resources(&mut self) -> Result<Vec<View>, TestCaseError>;
    /// Host memory the device has charged.
    fn host_memory_used(&mut self) -> Result<u64, TestCaseError>;
    /// The hash the device reports for `bytes`.
    fn hash(bytes: &[u8]) -> String;
}

/// Runs `ops` on `dut` and on `model`, checking after every action that
/// they agree: the response, the trace, the display (where `dut` sees it),
/// every resource and the host memory charged. Then unreferences
/// everything: nothing may be left, not a byte charged.
pub fn run<D: DeviceUnderTest>(
    dut: &mut D,
    model: &mut Model,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    for (i, op) in ops.iter().enumerate() {
        for action in model.actions(op) {
            step(dut, model, &action)
                .map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {action:?}: {e}")))?;
        }
    }
    for id in model.ids() {
        let action = Action::Send(Request::Unref { id });
        step(dut, model, &action)
            .map_err(|e| TestCaseError::fail(format!("at the end: {action:?}: {e}")))?;
    }
    prop_assert_eq!(dut.resources()?, Vec::new(), "left at the end");
    prop_assert_eq!(dut.host_memory_used()?, 0, "charged at the end");
    Ok(())
}

/// One action on both, and the checks.
fn step<D: DeviceUnderTest>(
    dut: &mut D,
    model: &mut Model,
    action: &Action,
) -> Result<(), TestCaseError> {
    let x = model.apply(action);
    let response = match action {
        Action::Write { addr, data } => dut.write(*addr, data).map(|()| Ok(()))?,
        Action::Send(req) => dut.send(req)?,
        Action::FailAttaches(n) => dut.fail_attaches(*n).map(|()| Ok(()))?,
        Action::Reset => dut.reset().map(|()| Ok(()))?,
    };
    prop_assert_eq!(response, x.response, "response");
    let sorted = |mut events: Events| {
        // One request's violations may come in any order.
        events.violations.sort();
        events
    };
    prop_assert_eq!(sorted(dut.events()?), sorted(x.events), "trace");
    if let Some(shown) = dut.shown()? {
        prop_assert_eq!(shown, x.shown, "display");
    }
    prop_assert_eq!(dut.resources()?, model.views(D::hash), "resources");
    prop_assert_eq!(
        dut.host_memory_used()?,
        model.host_memory_used(),
        "host memory"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        max_host_memory: 1 << 30,
        resource_overhead: 100,
        entry_overhead: 10,
    };

    fn send(m: &mut Model, req: Request) -> Expect {
        m.apply(&Action::Send(req))
    }

    /// A 16 x 8 2D resource.
    fn create(m: &mut Model, id: u32) -> Expect {
        let (width, height) = (16, 8);
        send(m, Request::Create2d { id, width, height })
    }

    fn attach(m: &mut Model, id: u32, entries: &[Extent]) -> Expect {
        let entries = entries.to_vec();
        send(m, Request::Attach { id, entries })
    }

    fn violations(x: &Expect) -> Vec<(u32, Violation)> {
        let v = x.events.violations.iter();
        v.map(|(id, v, _)| (*id, v.clone())).collect()
    }

    #[test]
    fn attach_on_attached_and_detach_on_detached_are_violations_that_change_nothing() {
        let mut m = Model::new(0x1000, BUDGET);
        assert_eq!(create(&mut m, 1).response, Ok(()));
        let detach = send(&mut m, Request::Detach { id: 1 });
        assert_eq!(detach.response, Err(ErrorCode::Unspec));
        let named = (1, Violation::DoubleDetach, "resource_detach_backing".into());
        assert_eq!(detach.events.violations, vec![named]);
        assert_eq!(
            attach(&mut m, 1, &[(0x1000, 4096)]).events.attaches,
            vec![(1, 1)]
        );
        let again = attach(&mut m, 1, &[(0x2000, 4096)]);
        assert_eq!(again.response, Err(ErrorCode::Unspec));
        assert_eq!(violations(&again), vec![(1, Violation::DoubleAttach)]);
        let v = &m.views(|b| b.len().to_string())[0];
        assert_eq!(
            (v.backing.as_str(), v.generation, v.entries),
            ("attached", 1, 1)
        );
        assert_eq!(m.host_memory_used(), 16 * 8 * 4 + 100 + 10);
    }

    #[test]
    fn a_blob_created_without_entries_starts_detached() {
        let mut m = Model::new(0, BUDGET);
        let (id, size, entries) = (2, 4096, Vec::new());
        let created = send(&mut m, Request::CreateBlob { id, size, entries });
        assert_eq!(created.response, Ok(()));
        assert_eq!(m.views(|_| String::new())[0].backing, "detached");
        let short = attach(&mut m, 2, &[(0, 1000)]);
        assert_eq!(short.response, Err(ErrorCode::InvalidParameter));
        assert!(short.events.violations.is_empty());
        assert_eq!(
            attach(&mut m, 2, &[(0, 4096)]).events.attaches,
            vec![(2, 1)]
        );
    }

    #[test]
    fn unref_and_reset_detach_implicitly_and_blank_the_scanout() {
        let mut m = Model::new(0, BUDGET);
        create(&mut m, 1);
        attach(&mut m, 1, &[(0, 4096)]);
        let rect = rect(0, 0, 16, 8);
        let shown = send(&mut m, Request::SetScanout { id: 1, rect });
        let mode = Shown::Scanout {
            width: 16,
            height: 8,
        };
        assert_eq!(shown.shown, vec![mode]);
        create(&mut m, 2);
        attach(&mut m, 2, &[(4096, 4096)]);
        let unref = send(&mut m, Request::Unref { id: 1 });
        assert_eq!(unref.events.detaches, vec![(1, DetachReason::Unref)]);
        assert_eq!(unref.shown, vec![BLANK]);
        let reset = m.apply(&Action::Reset);
        assert_eq!(reset.events.detaches, vec![(2, DetachReason::Reset)]);
        assert!(m.ids().is_empty());
        assert_eq!(m.host_memory_used(), 0);
    }

    #[test]
    fn overlapping_backings_are_attached_and_recorded() {
        let mut m = Model::new(0, BUDGET);
        create(&mut m, 1);
        create(&mut m, 2);
        attach(&mut m, 1, &[(0, 8192)]);
        let x = attach(&mut m, 2, &[(4096 + 100, 4096)]);
        assert_eq!(x.response, Ok(()));
        let overlap = Violation::OverlappingBacking { other: 1 };
        assert_eq!(violations(&x), vec![(2, overlap)]);
        assert_eq!(x.events.violations[0].2, "resource_attach_backing");
    }

    #[test]
    fn ops_resolve_to_fresh_content_then_the_request() {
        let mut m = Model::new(0x10000, BUDGET);
        let pages = Pages::Fresh {
            first: 2,
            count: 2,
            split: true,
        };
        let actions = m.actions(&Op::Attach {
            id: Target::Raw(3),
            pages,
        });
        assert_eq!(actions.len(), 3);
        assert!(
            matches!(actions[0], Action::Write { addr: 0x12000, ref data } if data.len() == 4096)
        );
        let want = [(0x12000, 4096), (0x13000, 4096)];
        assert!(matches!(
            actions[2],
            Action::Send(Request::Attach { id: 3, ref entries }) if entries == &want
        ));
        let unref = m.actions(&Op::Unref {
            id: Target::Live(5),
        });
        assert!(matches!(
            unref[..],
            [Action::Send(Request::Unref { id: 6 })]
        ));
    }

    #[test]
    fn crop_takes_rows_at_their_stride() {
        let image: Vec<u8> = (0..64).collect();
        // Rows of 16 bytes from byte 8; one 4-byte pixel from (1, 1).
        assert_eq!(
            crop(&image, 8, 16, rect(1, 1, 1, 2)),
            [28, 29, 30, 31, 44, 45, 46, 47]
        );
    }
}
