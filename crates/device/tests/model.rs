//! Random command sequences against a small reference model of the
//! backing state machine. After every step the model predicts the
//! response, the violations, faults and detaches in the trace, what the
//! display was sent, and every resource's backing state, generation and
//! hashes; the host memory accounting is predicted too.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use gpuswap_device::trace::{DetachReason, EventKind, Violation};
use gpuswap_device::{DeviceConfig, Rect2d};
use gpuswap_protocol::{blob_mem, ctrl_type as t, ErrorCode, Response};
use proptest::prelude::*;

/// Two adjacent regions of 32 pages: backings may cross between them.
const REGION_PAGES: u64 = 32;
const RAM_PAGES: u64 = 2 * REGION_PAGES;
use gpuswap_device::{ENTRY_OVERHEAD, RESOURCE_OVERHEAD};

/// Which resource an op names.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The n-th live resource (modulo their number; id n + 1 if none).
    Live(usize),
    /// This id, live or not (0 and 77 are never live).
    Raw(u32),
}

#[derive(Debug, Clone)]
enum Pages {
    /// `count` pages from `first`, as one entry or one entry per page.
    Fresh { first: u64, count: u64, split: bool },
    /// The entries of the n-th attached resource (fresh pages if none).
    Of(usize),
}

#[derive(Debug, Clone)]
enum Op {
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
    FailAttaches(u32),
    Reset,
}

/// Which rect of an image an op names.
#[derive(Debug, Clone, Copy)]
enum Part {
    Full,
    Middle,
    Corner,
}

impl Part {
    fn of(self, (w, h): (u32, u32)) -> Rect2d {
        match self {
            Part::Full => rect2d(0, 0, w, h),
            Part::Middle => rect2d(w / 4, h / 4, w / 2, h / 2),
            Part::Corner => rect2d(0, 0, w / 2, h / 2),
        }
    }
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
        3 => (0..RAM_PAGES, 1..=3u64, any::<bool>()).prop_map(|(first, count, split)| {
            Pages::Fresh {
                first: first.min(RAM_PAGES - count),
                count,
                split,
            }
        }),
        1 => (0..8usize).prop_map(Pages::Of),
    ]
}

fn op() -> impl Strategy<Value = Op> {
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
        2 => (0..RAM_PAGES, any::<u64>()).prop_map(|(page, seed)| Op::Scribble { page, seed }),
        1 => (0..3u32).prop_map(Op::FailAttaches),
        1 => Just(Op::Reset),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TwoD { w: u32, h: u32 },
    Blob { size: u64 },
}

#[derive(Debug, Clone)]
struct MRes {
    kind: Kind,
    backing: Option<Vec<(u64, u32)>>,
    generation: u64,
    /// The expected host copy (2D only).
    host: Vec<u8>,
}

/// What a scanout shows: resource, shown rect, and for blobs the layout.
#[derive(Debug, Clone, Copy)]
struct MScanout {
    id: u32,
    rect: Rect2d,
    blob_layout: Option<(u32, u32)>,
}

/// The SET_SCANOUT_BLOB layout used for a blob of `size`: 16 pixels wide,
/// rows 128 bytes apart from byte 64, as many rows (up to 16) as fit.
fn blob_layout(size: u64) -> (u32, u32, u32, u32) {
    let (width, stride, offset) = (16u32, 128u32, 64u32);
    let height = ((size - 64 - 64) / 128 + 1).min(16) as u32;
    (width, height, stride, offset)
}

#[derive(Debug, Default)]
struct Expect {
    resp: Option<ErrorCode>,
    violations: Vec<(u32, Violation)>,
    faults: Vec<u32>,
    detaches: Vec<(u32, DetachReason)>,
    shown: Vec<Shown>,
}

struct Model {
    res: BTreeMap<u32, MRes>,
    scanout: Option<MScanout>,
    guest: Vec<u8>,
    fail_attaches: u32,
    used: u64,
    max: u64,
}

impl Model {
    fn read(&self, extents: &[(u64, u32)], offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut flat = Vec::new();
        for &(addr, l) in extents {
            flat.extend_from_slice(&self.guest[addr as usize..addr as usize + l as usize]);
        }
        let start = offset as usize;
        flat.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }

    fn charge(&mut self, bytes: u64) -> Result<(), ErrorCode> {
        if self.used + bytes > self.max {
            return Err(ErrorCode::OutOfMemory);
        }
        self.used += bytes;
        Ok(())
    }

    fn overlapping(&self, id: u32, extents: &[(u64, u32)]) -> BTreeSet<u32> {
        let pages_of = |ext: &[(u64, u32)]| -> BTreeSet<u64> {
            ext.iter()
                .flat_map(|&(a, l)| (a / PAGE)..(a + u64::from(l)).div_ceil(PAGE))
                .collect()
        };
        let mine = pages_of(extents);
        self.res
            .iter()
            .filter(|&(&other, r)| other != id && r.backing.is_some())
            .filter(|(_, r)| !pages_of(r.backing.as_ref().unwrap()).is_disjoint(&mine))
            .map(|(&other, _)| other)
            .collect()
    }

    /// A live resource, or UnknownResource.
    fn live(&self, id: u32, x: &mut Expect) -> Result<MRes, ErrorCode> {
        match self.res.get(&id) {
            Some(r) => Ok(r.clone()),
            None => {
                x.violations.push((id, Violation::UnknownResource));
                Err(ErrorCode::InvalidResourceId)
            }
        }
    }

    fn attached(&self, id: u32, x: &mut Expect) -> Result<MRes, ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_none() {
            x.violations.push((id, Violation::UseWhileDetached));
            return Err(ErrorCode::Unspec);
        }
        Ok(r)
    }

    fn new_id(&self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        if id == 0 {
            return Err(ErrorCode::InvalidResourceId);
        }
        if self.res.contains_key(&id) {
            x.violations.push((id, Violation::DuplicateResource));
            return Err(ErrorCode::InvalidResourceId);
        }
        Ok(())
    }

    fn create_2d(&mut self, id: u32, w: u32, h: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        self.new_id(id, x)?;
        let size = u64::from(w * h * 4);
        self.charge(size + RESOURCE_OVERHEAD)?;
        let res = MRes {
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
        entries: &[(u64, u32)],
        x: &mut Expect,
    ) -> Result<(), ErrorCode> {
        self.new_id(id, x)?;
        self.charge(RESOURCE_OVERHEAD)?;
        let res = MRes {
            kind: Kind::Blob { size },
            backing: None,
            generation: 0,
            host: Vec::new(),
        };
        self.res.insert(id, res);
        if !entries.is_empty() {
            if let Err(e) = self.attach(id, entries, x) {
                self.destroy(id, DetachReason::Unref, x);
                return Err(e);
            }
        }
        Ok(())
    }

    fn attach(&mut self, id: u32, entries: &[(u64, u32)], x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_some() {
            x.violations.push((id, Violation::DoubleAttach));
            return Err(ErrorCode::Unspec);
        }
        if self.fail_attaches > 0 {
            self.fail_attaches -= 1;
            x.faults.push(id);
            return Err(ErrorCode::OutOfMemory);
        }
        let len: u64 = entries.iter().map(|&(_, l)| u64::from(l)).sum();
        if let Kind::Blob { size } = r.kind {
            if len < size {
                return Err(ErrorCode::InvalidParameter);
            }
        }
        self.charge(entries.len() as u64 * ENTRY_OVERHEAD)?;
        for other in self.overlapping(id, entries) {
            x.violations
                .push((id, Violation::OverlappingBacking { other }));
        }
        let r = self.res.get_mut(&id).unwrap();
        r.backing = Some(entries.to_vec());
        r.generation += 1;
        Ok(())
    }

    fn drop_backing(&mut self, id: u32) -> bool {
        let r = self.res.get_mut(&id).unwrap();
        match r.backing.take() {
            Some(entries) => {
                self.used -= entries.len() as u64 * ENTRY_OVERHEAD;
                true
            }
            None => false,
        }
    }

    fn detach(&mut self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.live(id, x)?;
        if r.backing.is_none() {
            x.violations.push((id, Violation::DoubleDetach));
            return Err(ErrorCode::Unspec);
        }
        self.drop_backing(id);
        x.detaches.push((id, DetachReason::Command));
        Ok(())
    }

    fn destroy(&mut self, id: u32, reason: DetachReason, x: &mut Expect) {
        if self.drop_backing(id) {
            x.detaches.push((id, reason));
        }
        if self.scanout.is_some_and(|s| s.id == id) {
            self.scanout = None;
            x.shown.push(blank());
        }
        let r = self.res.remove(&id).unwrap();
        self.used -= RESOURCE_OVERHEAD;
        if let Kind::TwoD { w, h } = r.kind {
            self.used -= u64::from(w * h * 4);
        }
    }

    fn transfer(&mut self, id: u32, part: Part, x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.attached(id, x)?;
        let Kind::TwoD { w, h } = r.kind else {
            return Ok(());
        };
        let rect = part.of((w, h));
        let stride = u64::from(w) * 4;
        let row = u64::from(rect.width) * 4;
        let offset = u64::from(rect.y) * stride + u64::from(rect.x) * 4;
        let backing = r.backing.unwrap();
        let backing_len: u64 = backing.iter().map(|&(_, l)| u64::from(l)).sum();
        if (u64::from(rect.height) - 1) * stride + row + offset > backing_len {
            return Err(ErrorCode::InvalidParameter);
        }
        for y in 0..u64::from(rect.height) {
            let line = self
                .read(&backing, offset + y * stride, row as usize)
                .unwrap();
            let at = ((u64::from(rect.y) + y) * stride + u64::from(rect.x) * 4) as usize;
            let host = &mut self.res.get_mut(&id).unwrap().host;
            host[at..at + row as usize].copy_from_slice(&line);
        }
        Ok(())
    }

    fn flush(&mut self, id: u32, rect: Rect2d, x: &mut Expect) -> Result<(), ErrorCode> {
        let r = self.attached(id, x)?;
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
        let flushed = rect2d(x0, y0, x1 - x0, y1 - y0);
        let pixels = match (r.kind, s.blob_layout) {
            (Kind::TwoD { w, .. }, _) => crop(&r.host, 0, w as usize * 4, flushed),
            (Kind::Blob { size }, Some((stride, offset))) => {
                let image = self
                    .read(r.backing.as_ref().unwrap(), 0, size as usize)
                    .unwrap();
                crop(&image, offset as usize, stride as usize, flushed)
            }
            (Kind::Blob { .. }, None) => unreachable!("blobs only show through SET_SCANOUT_BLOB"),
        };
        x.shown.push(Shown::Update {
            scanout: 0,
            rect: Rect2d {
                x: x0 - s.rect.x,
                y: y0 - s.rect.y,
                ..flushed
            },
            pixels,
        });
        Ok(())
    }

    fn set_scanout(&mut self, id: u32, part: Part, x: &mut Expect) -> Result<(), ErrorCode> {
        if id == 0 {
            self.disable(x);
            return Ok(());
        }
        let r = self.attached(id, x)?;
        let Kind::TwoD { w, h } = r.kind else {
            return Err(ErrorCode::InvalidParameter);
        };
        self.show(id, part.of((w, h)), None, x);
        Ok(())
    }

    fn set_scanout_blob(&mut self, id: u32, part: Part, x: &mut Expect) -> Result<(), ErrorCode> {
        if id == 0 {
            self.disable(x);
            return Ok(());
        }
        let r = self.attached(id, x)?;
        let Kind::Blob { size } = r.kind else {
            return Err(ErrorCode::InvalidParameter);
        };
        let (w, h, stride, offset) = blob_layout(size);
        self.show(id, part.of((w, h)), Some((stride, offset)), x);
        Ok(())
    }

    fn show(&mut self, id: u32, rect: Rect2d, blob_layout: Option<(u32, u32)>, x: &mut Expect) {
        self.scanout = Some(MScanout {
            id,
            rect,
            blob_layout,
        });
        x.shown.push(Shown::Scanout {
            scanout: 0,
            width: rect.width,
            height: rect.height,
        });
    }

    fn disable(&mut self, x: &mut Expect) {
        self.scanout = None;
        x.shown.push(blank());
    }

    fn unref(&mut self, id: u32, x: &mut Expect) -> Result<(), ErrorCode> {
        self.live(id, x)?;
        self.destroy(id, DetachReason::Unref, x);
        Ok(())
    }

    fn reset(&mut self, x: &mut Expect) {
        let ids: Vec<u32> = self.res.keys().copied().collect();
        for id in ids {
            self.destroy(id, DetachReason::Reset, x);
        }
    }
}

fn blank() -> Shown {
    Shown::Scanout {
        scanout: 0,
        width: 0,
        height: 0,
    }
}

/// The size in pixels of what a resource shows: a 2D resource's own, a
/// blob's scanout layout (anything for ids that are not live).
fn image_size(kind: Option<Kind>) -> (u32, u32) {
    match kind {
        Some(Kind::TwoD { w, h }) => (w, h),
        Some(Kind::Blob { size }) => {
            let (w, h, _, _) = blob_layout(size);
            (w, h)
        }
        None => (16, 8),
    }
}

fn wire(r: Rect2d) -> gpuswap_protocol::wire::Rect {
    rect(r.x, r.y, r.width, r.height)
}

struct Run {
    bench: Bench,
    model: Model,
    step: u64,
}

impl Run {
    fn new(max_host_memory: u64) -> Self {
        let config = DeviceConfig {
            max_host_memory,
            max_entries: 8,
            ..DeviceConfig::default()
        };
        let region = (REGION_PAGES * PAGE) as usize;
        let bench = Bench::new(config, &[(0, region), (region as u64, region)]);
        let model = Model {
            res: BTreeMap::new(),
            scanout: None,
            guest: vec![0; RAM_PAGES as usize * PAGE as usize],
            fail_attaches: 0,
            used: 0,
            max: max_host_memory,
        };
        Run {
            bench,
            model,
            step: 0,
        }
    }

    /// The guest writes `data` at `addr`, in real memory and the model.
    fn write(&mut self, addr: u64, data: &[u8]) {
        scatter(&self.bench.mem, &[(addr, data.len() as u32)], data);
        self.model.guest[addr as usize..addr as usize + data.len()].copy_from_slice(data);
    }

    /// The entries for `pages`, freshly written by the guest.
    fn entries(&mut self, pages: &Pages) -> Vec<(u64, u32)> {
        let fresh = |first: u64, count: u64, split: bool| -> Vec<(u64, u32)> {
            if split {
                (first..first + count)
                    .map(|p| (p * PAGE, PAGE as u32))
                    .collect()
            } else {
                vec![(first * PAGE, (count * PAGE) as u32)]
            }
        };
        let entries = match *pages {
            Pages::Fresh {
                first,
                count,
                split,
            } => fresh(first, count, split),
            Pages::Of(n) => {
                let attached: Vec<&MRes> = self
                    .model
                    .res
                    .values()
                    .filter(|r| r.backing.is_some())
                    .collect();
                match attached.len() {
                    0 => fresh(n as u64 * 7, 2, false),
                    len => attached[n % len].backing.clone().unwrap(),
                }
            }
        };
        for &(addr, len) in &entries {
            let data = pattern(self.step.wrapping_mul(1000) + addr, len as usize);
            self.write(addr, &data);
        }
        entries
    }

    fn id(&self, target: Target) -> u32 {
        match target {
            Target::Live(n) => match self.model.res.len() {
                0 => n as u32 + 1,
                len => *self.model.res.keys().nth(n % len).unwrap(),
            },
            Target::Raw(id) => id,
        }
    }

    fn kind(&self, id: u32) -> Option<Kind> {
        self.model.res.get(&id).map(|r| r.kind)
    }

    /// Runs one op on the device and the model, checks they agree.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.step += 1;
        let mut x = Expect::default();
        let (bytes, result): (Option<Vec<u8>>, Result<(), ErrorCode>) = match *op {
            Op::Create2d { id, w, h } => (
                Some(create_2d(id, XRGB, w, h)),
                self.model.create_2d(id, w, h, &mut x),
            ),
            Op::CreateBlob {
                id,
                size,
                ref entries,
            } => {
                let entries = match entries {
                    Some(p) => self.entries(p),
                    None => Vec::new(),
                };
                let bytes = create_blob(id, blob_mem::GUEST, size, &entries);
                (
                    Some(bytes),
                    self.model.create_blob(id, size, &entries, &mut x),
                )
            }
            Op::Attach { id, ref pages } => {
                let id = self.id(id);
                let entries = self.entries(pages);
                (
                    Some(attach(id, &entries)),
                    self.model.attach(id, &entries, &mut x),
                )
            }
            Op::Detach { id } => {
                let id = self.id(id);
                (Some(detach(id)), self.model.detach(id, &mut x))
            }
            Op::Transfer { id, part } => {
                let id = self.id(id);
                let r = part.of(image_size(self.kind(id)));
                let offset = match self.kind(id) {
                    Some(Kind::TwoD { w, .. }) => {
                        u64::from(r.y) * u64::from(w) * 4 + u64::from(r.x) * 4
                    }
                    _ => 0,
                };
                let bytes = transfer(id, wire(r), offset);
                (Some(bytes), self.model.transfer(id, part, &mut x))
            }
            Op::Flush { id, part } => {
                let id = self.id(id);
                let r = part.of(image_size(self.kind(id)));
                (Some(flush(id, wire(r))), self.model.flush(id, r, &mut x))
            }
            Op::SetScanout { id, part } => {
                let id = self.id(id);
                let r = part.of(image_size(self.kind(id)));
                (
                    Some(set_scanout(0, id, wire(r))),
                    self.model.set_scanout(id, part, &mut x),
                )
            }
            Op::SetScanoutBlob { id, part } => {
                let id = self.id(id);
                let size = match self.kind(id) {
                    Some(Kind::Blob { size }) => size,
                    _ => 4096,
                };
                let (w, h, stride, offset) = blob_layout(size);
                let bytes = set_scanout_blob(0, id, wire(part.of((w, h))), (w, h), stride, offset);
                (Some(bytes), self.model.set_scanout_blob(id, part, &mut x))
            }
            Op::Unref { id } => {
                let id = self.id(id);
                (Some(unref(id)), self.model.unref(id, &mut x))
            }
            Op::Scribble { page, seed } => {
                self.write(page * PAGE, &pattern(seed, PAGE as usize));
                (None, Ok(()))
            }
            Op::FailAttaches(n) => {
                self.bench.dev.faults_mut().fail_attaches = n;
                self.model.fail_attaches = n;
                (None, Ok(()))
            }
            Op::Reset => {
                self.bench.dev.reset();
                self.model.reset(&mut x);
                (None, Ok(()))
            }
        };
        x.resp = result.err();

        if let Some(bytes) = bytes {
            let req = self.bench.decode(&bytes).expect("request decodes");
            let name = t::name(req.cmd.type_code());
            let resp = self.bench.dev.process(req);
            let expected = x.resp.map_or(Response::OkNoData, Response::Err);
            prop_assert_eq!(&resp, &expected, "response");
            let events = self.bench.events();
            check_events(&events, &x, Some(name))?;
        } else {
            let events = self.bench.events();
            check_events(&events, &x, None)?;
        }
        prop_assert_eq!(&self.bench.display.take(), &x.shown, "display");
        self.check_resources()
    }

    /// Every live resource agrees with the model.
    fn check_resources(&mut self) -> Result<(), TestCaseError> {
        let infos = self.bench.dev.resources();
        let ids: Vec<u32> = infos.iter().map(|i| i.id).collect();
        let expected: Vec<u32> = self.model.res.keys().copied().collect();
        prop_assert_eq!(ids, expected, "live resources");
        prop_assert_eq!(
            self.bench.dev.host_memory_used(),
            self.model.used,
            "host memory"
        );
        for info in infos {
            let m = &self.model.res[&info.id];
            let shown = self.model.scanout.is_some_and(|s| s.id == info.id);
            prop_assert_eq!(info.generation, m.generation, "generation of {}", info.id);
            prop_assert_eq!(info.scanouts.is_empty(), !shown, "scanouts of {}", info.id);
            match (m.kind, info.kind) {
                (Kind::TwoD { w, h }, "2d") => {
                    prop_assert_eq!((info.width, info.height), (Some(w), Some(h)));
                    prop_assert_eq!(
                        info.host_hash.as_ref(),
                        Some(&hash(&m.host)),
                        "host copy of {}",
                        info.id
                    );
                }
                (Kind::Blob { size }, "blob") => {
                    prop_assert_eq!(info.size, size);
                    prop_assert_eq!(info.host_hash, None);
                }
                (kind, name) => prop_assert!(false, "{kind:?} shown as {name}"),
            }
            match &m.backing {
                Some(entries) => {
                    prop_assert_eq!(info.backing, "attached", "backing of {}", info.id);
                    prop_assert_eq!(info.entries, entries.len());
                    let len: u64 = entries.iter().map(|&(_, l)| u64::from(l)).sum();
                    let hashed = len.min(info.size) as usize;
                    let content = self.model.read(entries, 0, hashed).unwrap();
                    prop_assert_eq!(
                        info.backing_hash,
                        Some(hash(&content)),
                        "backing of {}",
                        info.id
                    );
                }
                None => {
                    prop_assert_eq!(info.backing, "detached", "backing of {}", info.id);
                    prop_assert_eq!(info.backing_hash, None);
                }
            }
        }
        Ok(())
    }

    /// Unreferences everything: nothing may be left, not a byte charged.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let ids: Vec<u32> = self.model.res.keys().copied().collect();
        for id in ids {
            self.step(&Op::Unref {
                id: Target::Raw(id),
            })?;
        }
        prop_assert!(self.bench.dev.resources().is_empty());
        prop_assert_eq!(self.bench.dev.host_memory_used(), 0);
        Ok(())
    }
}

fn check_events(
    events: &[gpuswap_device::trace::Event],
    x: &Expect,
    command: Option<&'static str>,
) -> Result<(), TestCaseError> {
    let mut violations = Vec::new();
    for (id, v, cmd) in violations_of(events) {
        prop_assert_eq!(
            Some(cmd),
            command,
            "violation {:?} named another command",
            v
        );
        violations.push((id, v));
    }
    let sorted = |mut v: Vec<(u32, Violation)>| {
        v.sort_by_key(|(id, v)| (*id, format!("{v:?}")));
        v
    };
    prop_assert_eq!(
        sorted(violations),
        sorted(x.violations.clone()),
        "violations"
    );
    let faults: Vec<u32> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Fault { .. }))
        .map(|e| e.resource_id)
        .collect();
    prop_assert_eq!(&faults, &x.faults, "faults");
    prop_assert_eq!(&detaches_of(events), &x.detaches, "detaches");
    Ok(())
}

fn run(max_host_memory: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut run = Run::new(max_host_memory);
    for (i, op) in ops.iter().enumerate() {
        run.step(op)
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
    }
    run.finish()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Plenty of host memory: the state machine alone.
    #[test]
    fn device_follows_the_model(ops in prop::collection::vec(op(), 1..200)) {
        run(1 << 30, &ops)?;
    }

    /// Tight host memory (about two 64x32 resources): out-of-memory paths too.
    #[test]
    fn device_follows_the_model_under_memory_pressure(ops in prop::collection::vec(op(), 1..200)) {
        run(2 * (8192 + RESOURCE_OVERHEAD) + 4 * ENTRY_OVERHEAD, &ops)?;
    }
}
