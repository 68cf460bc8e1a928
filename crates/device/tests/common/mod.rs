//! Helpers shared by the device integration tests: requests built as wire
//! bytes and decoded by the protocol crate, a test bench around
//! `GpuDevice`, and a `Display` that records what it is shown.

// Each test file uses a different subset of these helpers; helpers only
// one file uses live in that file, and what none uses is removed (checked
// by building with this allow turned into a warning).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use gpuswap_device::trace::{DetachReason, Event, EventKind, Violation};
use gpuswap_device::{
    DeviceConfig, Display, DisplayMode, GpuDevice, Rect2d, Renderer, ResourceKind, RutabagaRenderer,
};
use gpuswap_protocol::ctrl_type as t;
use gpuswap_protocol::wire::*;
use gpuswap_protocol::{DecodeError, Request, Response};
use gpuswap_testkit::model::View;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xxhash_rust::xxh3::xxh3_64;

pub type Mem = GuestMemoryMmap<()>;
pub type Dev = GpuDevice<RutabagaRenderer, Mem>;

pub const PAGE: u64 = 4096;
pub const XRGB: u32 = gpuswap_protocol::format::B8G8R8X8_UNORM;

/// Guest memory made of `(start, len)` regions.
pub fn guest_memory(ranges: &[(u64, usize)]) -> Arc<Mem> {
    let ranges: Vec<(GuestAddress, usize)> =
        ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("test guest memory"))
}

/// The hash [`inspect`] reports for `bytes` (16 hex digits of xxh3-64, as
/// the control socket prints them).
pub fn hash(bytes: &[u8]) -> String {
    format!("{:016x}", xxh3_64(bytes))
}

/// A resource as these tests look at it: the model's [`View`] of the
/// device's snapshot, with its host copy and the first `size` bytes of its
/// backing read whole and hashed by [`hash`] (the daemon's control socket
/// shows the same, read in bands).
/// Resource `id` of `dev`, if it is live (see above).
pub fn inspect<R: Renderer, M: GuestMemoryBackend>(
    dev: &mut GpuDevice<R, M>,
    id: u32,
) -> Option<View> {
    let s = dev.snapshot(id)?;
    let size = s.kind.content_len();
    let (kind, width, height) = match s.kind {
        ResourceKind::TwoD { width, height, .. } => ("2d", Some(width), Some(height)),
        ResourceKind::GuestBlob { .. } => ("blob", None, None),
    };
    let host_hash = height.map(|rows| {
        let mut copy = vec![0; size as usize];
        assert!(
            dev.read_host_band(id, s.host_version, 0..rows, &mut copy),
            "resource {id}: host copy unreadable"
        );
        hash(&copy)
    });
    let mut backing = Vec::new();
    let read = s.read_backing(size, |bytes| backing.extend_from_slice(bytes));
    Some(View {
        id,
        kind: kind.into(),
        width,
        height,
        size,
        backing: if s.is_attached() {
            "attached"
        } else {
            "detached"
        }
        .into(),
        generation: s.generation,
        entries: s.entries(),
        backing_bytes: s.backing_len(),
        host_hash,
        backing_hash: read.and_then(Result::ok).map(|()| hash(&backing)),
        scanouts: s.scanouts.clone(),
    })
}

/// Every live resource of `dev`, in id order.
pub fn inspect_all<R: Renderer, M: GuestMemoryBackend>(dev: &mut GpuDevice<R, M>) -> Vec<View> {
    dev.resource_ids()
        .into_iter()
        .filter_map(|id| inspect(dev, id))
        .collect()
}

pub fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

// ---- Requests as wire bytes -------------------------------------------

/// A request: `hdr` (its type set to `type_`) followed by `body`.
pub fn with_header(mut hdr: CtrlHeader, type_: u32, body: &[u8]) -> Vec<u8> {
    hdr.type_ = type_;
    let mut bytes = hdr.as_slice().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// An unfenced request of `type_` with `body`.
pub fn request(type_: u32, body: &[u8]) -> Vec<u8> {
    with_header(CtrlHeader::default(), type_, body)
}

fn entries_bytes(entries: &[(u64, u32)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(addr, length) in entries {
        let e = MemEntry {
            addr,
            length,
            padding: 0,
        };
        bytes.extend_from_slice(e.as_slice());
    }
    bytes
}

pub fn create_2d(id: u32, format: u32, width: u32, height: u32) -> Vec<u8> {
    let body = ResourceCreate2d {
        resource_id: id,
        format,
        width,
        height,
    };
    request(t::RESOURCE_CREATE_2D, body.as_slice())
}

pub fn attach(id: u32, entries: &[(u64, u32)]) -> Vec<u8> {
    let args = ResourceAttachBacking {
        resource_id: id,
        nr_entries: entries.len() as u32,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(&entries_bytes(entries));
    request(t::RESOURCE_ATTACH_BACKING, &body)
}

fn resource_id(type_: u32, id: u32) -> Vec<u8> {
    let body = ResourceId {
        resource_id: id,
        padding: 0,
    };
    request(type_, body.as_slice())
}

pub fn detach(id: u32) -> Vec<u8> {
    resource_id(t::RESOURCE_DETACH_BACKING, id)
}

pub fn unref(id: u32) -> Vec<u8> {
    resource_id(t::RESOURCE_UNREF, id)
}

pub fn transfer(id: u32, r: Rect, offset: u64) -> Vec<u8> {
    let body = TransferToHost2d {
        r,
        offset,
        resource_id: id,
        padding: 0,
    };
    request(t::TRANSFER_TO_HOST_2D, body.as_slice())
}

pub fn flush(id: u32, r: Rect) -> Vec<u8> {
    let body = ResourceFlush {
        r,
        resource_id: id,
        padding: 0,
    };
    request(t::RESOURCE_FLUSH, body.as_slice())
}

pub fn set_scanout(scanout_id: u32, id: u32, r: Rect) -> Vec<u8> {
    let body = SetScanout {
        r,
        scanout_id,
        resource_id: id,
    };
    request(t::SET_SCANOUT, body.as_slice())
}

pub fn create_blob(id: u32, blob_mem: u32, size: u64, entries: &[(u64, u32)]) -> Vec<u8> {
    let args = ResourceCreateBlob {
        resource_id: id,
        blob_mem,
        blob_flags: 0,
        nr_entries: entries.len() as u32,
        blob_id: 0,
        size,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(&entries_bytes(entries));
    request(t::RESOURCE_CREATE_BLOB, &body)
}

/// SET_SCANOUT_BLOB of a `width` x `height` XRGB image at `offset` with
/// rows `stride` apart, showing `r` of it.
pub fn set_scanout_blob(
    scanout_id: u32,
    id: u32,
    r: Rect,
    (width, height): (u32, u32),
    stride: u32,
    offset: u32,
) -> Vec<u8> {
    let body = SetScanoutBlob {
        r,
        scanout_id,
        resource_id: id,
        width,
        height,
        format: XRGB,
        padding: 0,
        strides: [stride, 0, 0, 0],
        offsets: [offset, 0, 0, 0],
    };
    request(t::SET_SCANOUT_BLOB, body.as_slice())
}

// ---- A display that records ---------------------------------------------

/// One call the device made on the display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Scanout {
        scanout: u32,
        width: u32,
        height: u32,
    },
    Update {
        scanout: u32,
        rect: Rect2d,
        pixels: Vec<u8>,
    },
    Cursor {
        scanout: u32,
        x: u32,
        y: u32,
        hot: (u32, u32),
        image: Vec<u8>,
    },
    CursorMove {
        scanout: u32,
        x: u32,
        y: u32,
    },
    CursorHide {
        scanout: u32,
    },
}

/// A `Display` that keeps every call for the test to look at.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Shown>>>);

impl Recorder {
    /// The calls since the last `take`.
    pub fn take(&self) -> Vec<Shown> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn push(&self, s: Shown) {
        self.0.lock().unwrap().push(s);
    }
}

impl Display for Recorder {
    fn display_info(&mut self) -> Option<Vec<DisplayMode>> {
        None
    }

    fn edid(&mut self, _scanout: u32) -> Option<Vec<u8>> {
        None
    }

    fn scanout(&mut self, scanout: u32, width: u32, height: u32) {
        self.push(Shown::Scanout {
            scanout,
            width,
            height,
        });
    }

    fn update(&mut self, scanout: u32, rect: Rect2d, pixels: &[u8]) {
        self.push(Shown::Update {
            scanout,
            rect,
            pixels: pixels.to_vec(),
        });
    }

    fn cursor_update(
        &mut self,
        scanout: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image: &[u8],
    ) {
        self.push(Shown::Cursor {
            scanout,
            x,
            y,
            hot: (hot_x, hot_y),
            image: image.to_vec(),
        });
    }

    fn cursor_move(&mut self, scanout: u32, x: u32, y: u32) {
        self.push(Shown::CursorMove { scanout, x, y });
    }

    fn cursor_hide(&mut self, scanout: u32) {
        self.push(Shown::CursorHide { scanout });
    }
}

// ---- The bench ----------------------------------------------------------

/// A device over real guest memory, with a recording display, that sends
/// requests as bytes and remembers which events the test has seen.
pub struct Bench {
    pub dev: Dev,
    pub mem: Arc<Mem>,
    pub display: Recorder,
    seen: u64,
}

impl Bench {
    pub fn new(config: DeviceConfig, ranges: &[(u64, usize)]) -> Self {
        let renderer = RutabagaRenderer::new().expect("rutabaga 2D");
        let mut dev = Dev::new(config, renderer);
        let mem = guest_memory(ranges);
        dev.set_memory(mem.clone());
        let display = Recorder::default();
        dev.set_display(Some(Box::new(display.clone())));
        Bench {
            dev,
            mem,
            display,
            seen: 0,
        }
    }

    /// 1 MiB of guest RAM at 0, default limits.
    pub fn simple() -> Self {
        Self::new(DeviceConfig::default(), &[(0, 1 << 20)])
    }

    /// Decodes `bytes` as a control-queue request with the device's limit.
    pub fn decode(&self, bytes: &[u8]) -> Result<Request, (Option<CtrlHeader>, DecodeError)> {
        Request::decode_ctrl(bytes, self.dev.config().max_entries)
    }

    /// Decodes and processes a control-queue request.
    pub fn send(&mut self, bytes: &[u8]) -> Response {
        let req = self.decode(bytes).expect("request decodes");
        self.dev.process(req)
    }

    /// Decodes and processes a cursor-queue request.
    pub fn send_cursor(&mut self, bytes: &[u8]) -> Response {
        let req = Request::decode_cursor(bytes).expect("cursor request decodes");
        self.dev.process(req)
    }

    /// Sends and asserts an OK_NODATA answer.
    pub fn ok(&mut self, bytes: &[u8]) {
        let req = self.decode(bytes).expect("request decodes");
        let name = gpuswap_protocol::ctrl_type::name(req.cmd.type_code());
        let resp = self.dev.process(req);
        assert_eq!(resp, Response::OkNoData, "{name}");
    }

    /// Events since the previous call.
    pub fn events(&mut self) -> Vec<Event> {
        let events = self.dev.events(self.seen, None);
        self.seen = self.dev.trace().last_seq();
        events
    }

    /// Violations among the events since the previous `events` call, as
    /// (resource, violation, command).
    pub fn violations(&mut self) -> Vec<(u32, Violation, &'static str)> {
        violations_of(&self.events())
    }

    pub fn info(&mut self, id: u32) -> View {
        inspect(&mut self.dev, id).unwrap_or_else(|| panic!("resource {id} is not live"))
    }

    /// Writes `data` across `extents` in order (scatter, as a driver's
    /// sg list lays out a buffer).
    pub fn scatter(&self, extents: &[(u64, u32)], data: &[u8]) {
        scatter(&self.mem, extents, data);
    }
}

pub fn scatter(mem: &Mem, extents: &[(u64, u32)], data: &[u8]) {
    let mut at = 0usize;
    for &(addr, len) in extents {
        if at >= data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - at);
        mem.write_slice(&data[at..at + n], GuestAddress(addr))
            .expect("extent in guest memory");
        at += n;
    }
    assert_eq!(at, data.len(), "extents shorter than the data");
}

pub fn violations_of(events: &[Event]) -> Vec<(u32, Violation, &'static str)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Violation { violation, command } => {
                Some((e.resource_id, violation, command))
            }
            _ => None,
        })
        .collect()
}

pub fn detaches_of(events: &[Event]) -> Vec<(u32, DetachReason)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Detach { reason } => Some((e.resource_id, reason)),
            _ => None,
        })
        .collect()
}
