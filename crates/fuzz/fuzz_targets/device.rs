//! Sequences of typed requests through `GpuDevice::process`, with the
//! real rutabaga 2D renderer, over guest memory of a few fixed layouts.
//!
//! Structure-aware: resource ids come from 0..8 and guest addresses from
//! the pages of the layouts (plus the holes and a little past the end),
//! so requests hit live resources and real guest RAM instead of being
//! refused at the first lookup. Every request goes through the wire
//! encoding and `decode_ctrl`/`decode_cursor`, as the daemon's would.
//! After every step: no panic, host memory within the limit, and
//! `GpuDevice::check_consistency` (resource table, backing state, memory
//! accounting and the page-ownership index agree).

#![no_main]

use arbitrary::Arbitrary;
use gpuswap_device::{DeviceConfig, GpuDevice, RutabagaRenderer};
use gpuswap_fuzz::{
    encode_request, guest_memory, request_bytes, CheckingDisplay, Mem, ADDRESS_SPACE_END, PAGE,
};
use gpuswap_protocol::wire::{
    CtrlHeader, CursorPos, GetEdid, MemEntry, Rect, ResourceCreate2d, ResourceCreateBlob,
    ResourceFlush, ResourceId, SetScanout, SetScanoutBlob, TransferToHost2d, UpdateCursor,
};
use gpuswap_protocol::{blob_mem, ctrl_type as t, format, Command, Request, Response};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;

/// A resource id: mostly 1..8, 0 now and then (reserved: "none").
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Id(u8);

impl Id {
    fn get(self) -> u32 {
        u32::from(self.0 % 8)
    }
}

/// A small size in pixels; 64 (the cursor size) is common, so cursors
/// and whole-page backings come up.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dim {
    Small(u8),
    Cursor,
    Large(u16),
    Huge(u32),
}

impl Dim {
    fn get(self) -> u32 {
        match self {
            Dim::Small(n) => u32::from(n % 70),
            Dim::Cursor => 64,
            Dim::Large(n) => u32::from(n % 2048),
            Dim::Huge(n) => n,
        }
    }
}

/// A backing entry: a page of the address space the layouts cover, an
/// offset into it and a length, each mostly well-formed.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Entry {
    page: u16,
    offset: Offset,
    len: Len,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Aligned,
    Bytes(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Pages(u8),
    Bytes(u16),
    Raw(u32),
}

impl Entry {
    fn mem_entry(self) -> MemEntry {
        let pages = ADDRESS_SPACE_END / PAGE;
        let base = u64::from(self.page) % pages * PAGE;
        let addr = match self.offset {
            Offset::Aligned => base,
            Offset::Bytes(n) => base + u64::from(n) % PAGE,
            Offset::Raw(a) => a,
        };
        let length = match self.len {
            Len::Pages(n) => (u32::from(n % 64) + 1) * PAGE as u32,
            Len::Bytes(n) => u32::from(n),
            Len::Raw(n) => n,
        };
        MemEntry {
            addr,
            length,
            padding: 0,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct SmallRect {
    x: Dim,
    y: Dim,
    width: Dim,
    height: Dim,
}

impl SmallRect {
    fn get(self) -> Rect {
        Rect {
            x: self.x.get(),
            y: self.y.get(),
            width: self.width.get(),
            height: self.height.get(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Format {
    Xrgb,
    Argb,
    Any(u32),
}

impl Format {
    fn get(self) -> u32 {
        match self {
            Format::Xrgb => format::B8G8R8X8_UNORM,
            Format::Argb => format::A8R8G8B8_UNORM,
            Format::Any(f) => f,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    Create2d {
        id: Id,
        format: Format,
        width: Dim,
        height: Dim,
    },
    CreateBlob {
        id: Id,
        /// Not GUEST: refused (no host memory).
        host_mem: bool,
        ctx_id: u8,
        size: u32,
        entries: Vec<Entry>,
    },
    Attach {
        id: Id,
        entries: Vec<Entry>,
    },
    Detach(Id),
    Unref(Id),
    Transfer {
        id: Id,
        rect: SmallRect,
        offset: u32,
    },
    SetScanout {
        scanout: u8,
        id: Id,
        rect: SmallRect,
    },
    SetScanoutBlob {
        scanout: u8,
        id: Id,
        rect: SmallRect,
        width: Dim,
        height: Dim,
        stride: u32,
        offset: u32,
    },
    Flush {
        id: Id,
        rect: SmallRect,
    },
    UpdateCursor {
        scanout: u8,
        id: Id,
        x: u32,
        y: u32,
    },
    MoveCursor {
        scanout: u8,
        x: u32,
        y: u32,
    },
    AssignUuid(Id),
    GetEdid(u8),
    GetDisplayInfo,
    /// Any bytes as a control-queue request.
    Raw(Vec<u8>),
    /// A new memory table (one of the fixed layouts).
    SetMemory(u8),
    Reset,
    Disconnect,
    /// Arm the injected faults.
    Faults {
        fail_attaches: u8,
        corrupt_transfers: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Host memory limit: 2^(12 + n % 14) bytes, 4 KiB to 32 MiB.
    memory_limit: u8,
    /// Entries per request: 1..=64.
    max_entries: u8,
    /// Scanouts: 1..=3.
    scanouts: u8,
    steps: Vec<Step>,
}

type Device = GpuDevice<RutabagaRenderer, Mem>;

fn entries_body(entries: &[Entry]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| e.mem_entry().as_slice().to_vec())
        .collect()
}

/// The wire bytes of a step that is a request, and which queue it is for.
fn request(step: &Step) -> Option<(Vec<u8>, bool)> {
    let rid = |type_, id: Id| {
        let body = ResourceId {
            resource_id: id.get(),
            padding: 0,
        };
        request_bytes(type_, body.as_slice())
    };
    let cursor = |type_, scanout: u8, id: Id, x, y| {
        let body = UpdateCursor {
            pos: CursorPos {
                scanout_id: u32::from(scanout % 4),
                x,
                y,
                padding: 0,
            },
            resource_id: id.get(),
            hot_x: 1,
            hot_y: 2,
            padding: 0,
        };
        request_bytes(type_, body.as_slice())
    };
    let bytes = match *step {
        Step::Create2d {
            id,
            format,
            width,
            height,
        } => {
            let body = ResourceCreate2d {
                resource_id: id.get(),
                format: format.get(),
                width: width.get(),
                height: height.get(),
            };
            request_bytes(t::RESOURCE_CREATE_2D, body.as_slice())
        }
        Step::CreateBlob {
            id,
            host_mem,
            ctx_id,
            size,
            ref entries,
        } => {
            let args = ResourceCreateBlob {
                resource_id: id.get(),
                blob_mem: if host_mem {
                    blob_mem::HOST3D
                } else {
                    blob_mem::GUEST
                },
                blob_flags: 0,
                nr_entries: entries.len() as u32,
                blob_id: 0,
                size: u64::from(size),
            };
            let mut body = args.as_slice().to_vec();
            body.extend_from_slice(&entries_body(entries));
            let mut bytes = request_bytes(t::RESOURCE_CREATE_BLOB, &body);
            // ctx_id is in the header; nonzero names a context that does
            // not exist.
            let mut hdr = CtrlHeader::default();
            hdr.as_mut_slice()
                .copy_from_slice(&bytes[..size_of::<CtrlHeader>()]);
            hdr.ctx_id = u32::from(ctx_id % 2);
            bytes[..size_of::<CtrlHeader>()].copy_from_slice(hdr.as_slice());
            bytes
        }
        Step::Attach { id, ref entries } => {
            let mut body = id.get().to_le_bytes().to_vec();
            body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            body.extend_from_slice(&entries_body(entries));
            request_bytes(t::RESOURCE_ATTACH_BACKING, &body)
        }
        Step::Detach(id) => rid(t::RESOURCE_DETACH_BACKING, id),
        Step::Unref(id) => rid(t::RESOURCE_UNREF, id),
        Step::AssignUuid(id) => rid(t::RESOURCE_ASSIGN_UUID, id),
        Step::Transfer { id, rect, offset } => {
            let body = TransferToHost2d {
                r: rect.get(),
                offset: u64::from(offset),
                resource_id: id.get(),
                padding: 0,
            };
            request_bytes(t::TRANSFER_TO_HOST_2D, body.as_slice())
        }
        Step::SetScanout { scanout, id, rect } => {
            let body = SetScanout {
                r: rect.get(),
                scanout_id: u32::from(scanout % 4),
                resource_id: id.get(),
            };
            request_bytes(t::SET_SCANOUT, body.as_slice())
        }
        Step::SetScanoutBlob {
            scanout,
            id,
            rect,
            width,
            height,
            stride,
            offset,
        } => {
            let body = SetScanoutBlob {
                r: rect.get(),
                scanout_id: u32::from(scanout % 4),
                resource_id: id.get(),
                width: width.get(),
                height: height.get(),
                format: format::B8G8R8X8_UNORM,
                padding: 0,
                strides: [stride, 0, 0, 0],
                offsets: [offset, 0, 0, 0],
            };
            request_bytes(t::SET_SCANOUT_BLOB, body.as_slice())
        }
        Step::Flush { id, rect } => {
            let body = ResourceFlush {
                r: rect.get(),
                resource_id: id.get(),
                padding: 0,
            };
            request_bytes(t::RESOURCE_FLUSH, body.as_slice())
        }
        Step::UpdateCursor { scanout, id, x, y } => {
            return Some((cursor(t::UPDATE_CURSOR, scanout, id, x, y), true))
        }
        Step::MoveCursor { scanout, x, y } => {
            return Some((cursor(t::MOVE_CURSOR, scanout, Id(0), x, y), true))
        }
        Step::GetEdid(scanout) => {
            let body = GetEdid {
                scanout: u32::from(scanout % 4),
                padding: 0,
            };
            request_bytes(t::GET_EDID, body.as_slice())
        }
        Step::GetDisplayInfo => request_bytes(t::GET_DISPLAY_INFO, &[]),
        Step::Raw(ref bytes) => bytes.clone(),
        Step::SetMemory(_) | Step::Reset | Step::Disconnect | Step::Faults { .. } => return None,
    };
    Some((bytes, false))
}

fn check(dev: &Device, step: &Step) {
    let limit = dev.config().max_host_memory;
    assert!(
        dev.host_memory_used() <= limit,
        "after {step:?}: {} bytes used of {limit}",
        dev.host_memory_used()
    );
    if let Err(e) = dev.check_consistency() {
        panic!("after {step:?}: {e}");
    }
}

fuzz_target!(|input: Input| {
    let config = DeviceConfig {
        max_host_memory: 1 << (12 + input.memory_limit % 14),
        max_entries: u32::from(input.max_entries % 64) + 1,
        scanouts: vec![(1280, 800); usize::from(input.scanouts % 3) + 1],
        trace_capacity: 256,
    };
    let scanouts = config.scanouts.len() as u32;
    let renderer = RutabagaRenderer::new().expect("rutabaga 2D");
    let mut dev = Device::new(config, renderer);
    dev.set_display(Some(Box::new(CheckingDisplay { scanouts })));
    dev.set_memory(guest_memory(0));
    for step in &input.steps {
        match *step {
            Step::SetMemory(layout) => dev.set_memory(guest_memory(usize::from(layout))),
            Step::Reset => {
                dev.reset();
                assert_eq!(dev.resource_count(), 0);
                assert_eq!(dev.host_memory_used(), 0, "reset leaves memory charged");
            }
            Step::Disconnect => {
                dev.disconnect();
                assert_eq!(
                    dev.host_memory_used(),
                    0,
                    "disconnect leaves memory charged"
                );
                dev.set_memory(guest_memory(0));
            }
            Step::Faults {
                fail_attaches,
                corrupt_transfers,
            } => {
                let faults = dev.faults_mut();
                faults.fail_attaches = u32::from(fail_attaches % 3);
                faults.corrupt_transfers = u32::from(corrupt_transfers % 3);
            }
            _ => {
                let Some((bytes, cursor_queue)) = request(step) else {
                    continue;
                };
                let decoded = if cursor_queue {
                    Request::decode_cursor(&bytes)
                } else {
                    Request::decode_ctrl(&bytes, dev.config().max_entries)
                };
                let req = match decoded {
                    Ok(req) => req,
                    Err((hdr, err)) => {
                        dev.record_malformed(hdr.map(|h| h.type_), &err);
                        continue;
                    }
                };
                debug_assert!(bytes.starts_with(&encode_request(&req)));
                let before = dev.resource_count();
                let creates = matches!(
                    req.cmd,
                    Command::ResourceCreate2d(_) | Command::ResourceCreateBlob { .. }
                );
                let name = t::name(req.cmd.type_code());
                let response = dev.process(req);
                // Only CREATE adds a resource, only on success.
                let created = creates && response == Response::OkNoData;
                assert!(
                    dev.resource_count() <= before + usize::from(created),
                    "{name} -> {response:?} added a resource"
                );
            }
        }
        check(&dev, step);
    }
});
