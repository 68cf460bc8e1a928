//! What the fuzz targets share: the wire encoding of a decoded request
//! (the inverse of `Request::decode_*`, which the protocol crate does not
//! offer because the daemon never sends requests), the fixed guest memory
//! layouts, and a display that checks what the device shows it.

use std::sync::Arc;

use gpuswap_device::{Display, DisplayMode, Rect2d};
use gpuswap_protocol::wire::{CtrlHeader, MemEntry, ResourceAttachBacking, MAX_SCANOUTS};
use gpuswap_protocol::{format, Command, GuestExtent, Request};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

pub type Mem = GuestMemoryMmap<()>;

pub const PAGE: u64 = 4096;
pub const MIB: u64 = 1 << 20;

/// The bytes `req` was decoded from, up to the end of what the decoder
/// read: header, fixed-size body, then the memory entries (their padding,
/// which the decoder drops, as zeros).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = req.hdr.as_slice().to_vec();
    match &req.cmd {
        Command::GetDisplayInfo | Command::Context3d { .. } => {}
        Command::GetEdid(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceCreate2d(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceUnref(a)
        | Command::ResourceDetachBacking(a)
        | Command::ResourceAssignUuid(a)
        | Command::ResourceUnmapBlob(a) => out.extend_from_slice(a.as_slice()),
        Command::SetScanout(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceFlush(a) => out.extend_from_slice(a.as_slice()),
        Command::TransferToHost2d(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceAttachBacking {
            resource_id,
            entries,
        } => {
            let args = ResourceAttachBacking {
                resource_id: *resource_id,
                nr_entries: entries.len() as u32,
            };
            out.extend_from_slice(args.as_slice());
            push_entries(&mut out, entries);
        }
        Command::GetCapsetInfo(a) => out.extend_from_slice(a.as_slice()),
        Command::GetCapset(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceCreateBlob { args, entries } => {
            out.extend_from_slice(args.as_slice());
            push_entries(&mut out, entries);
        }
        Command::SetScanoutBlob(a) => out.extend_from_slice(a.as_slice()),
        Command::ResourceMapBlob(a) => out.extend_from_slice(a.as_slice()),
        Command::UpdateCursor(a) | Command::MoveCursor(a) => out.extend_from_slice(a.as_slice()),
    }
    out
}

fn push_entries(out: &mut Vec<u8>, entries: &[GuestExtent]) {
    for e in entries {
        let entry = MemEntry {
            addr: e.addr,
            length: e.len,
            padding: 0,
        };
        out.extend_from_slice(entry.as_slice());
    }
}

/// A request with a default header of `type_` and `body`.
pub fn request_bytes(type_: u32, body: &[u8]) -> Vec<u8> {
    let hdr = CtrlHeader {
        type_,
        ..Default::default()
    };
    let mut out = hdr.as_slice().to_vec();
    out.extend_from_slice(body);
    out
}

/// The guest memory layouts the device and queue targets switch between,
/// as `(start, len)` regions. Layout 0 is the one they start with: two
/// 4 MiB regions with a 2 MiB hole between them. The others shrink,
/// move or drop a region (what a memory hot-unplug or a new memory
/// table does to live backings), and one has regions that neither start
/// nor end on a page boundary.
pub const LAYOUTS: [&[(u64, u64)]; 4] = [
    &[(0, 4 * MIB), (6 * MIB, 4 * MIB)],
    &[(0, 4 * MIB)],
    &[(0, 2 * MIB), (6 * MIB, 4 * MIB)],
    &[
        (0x1800, 4 * MIB - 0x1800),
        (6 * MIB + 0x800, 4 * MIB - 0x1000),
    ],
];

/// Where guest addresses stop being interesting: a little past the end
/// of the highest region of every layout.
pub const ADDRESS_SPACE_END: u64 = 11 * MIB;

/// Guest memory of layout `index` (modulo the number of layouts).
pub fn guest_memory_mmap(index: usize) -> Mem {
    let ranges: Vec<(GuestAddress, usize)> = LAYOUTS[index % LAYOUTS.len()]
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("fuzz guest memory layout")
}

/// [`guest_memory_mmap`], shared as the device model holds it.
pub fn guest_memory(index: usize) -> Arc<Mem> {
    Arc::new(guest_memory_mmap(index))
}

/// A display that checks every call against what the device reported:
/// scanout ids in range and pixel buffers exactly the size of their rect.
/// A mismatch is a device bug, so it panics (which is what the fuzzer
/// catches).
pub struct CheckingDisplay {
    pub scanouts: u32,
}

impl CheckingDisplay {
    fn check_scanout(&self, scanout: u32) {
        assert!(
            scanout < self.scanouts && (scanout as usize) < MAX_SCANOUTS,
            "display call for scanout {scanout} of {}",
            self.scanouts
        );
    }
}

impl Display for CheckingDisplay {
    fn display_info(&mut self) -> Option<Vec<DisplayMode>> {
        None
    }

    fn edid(&mut self, scanout: u32) -> Option<Vec<u8>> {
        self.check_scanout(scanout);
        None
    }

    fn scanout(&mut self, scanout: u32, _width: u32, _height: u32) {
        self.check_scanout(scanout);
    }

    fn update(&mut self, scanout: u32, rect: Rect2d, pixels: &[u8]) {
        self.check_scanout(scanout);
        let expected =
            u64::from(rect.width) * u64::from(rect.height) * u64::from(format::BYTES_PER_PIXEL);
        assert_eq!(
            pixels.len() as u64,
            expected,
            "update of {rect:?} with {} bytes",
            pixels.len()
        );
    }

    fn cursor_update(&mut self, scanout: u32, _x: u32, _y: u32, _hx: u32, _hy: u32, image: &[u8]) {
        self.check_scanout(scanout);
        let side = u64::from(gpuswap_device::display::CURSOR_SIZE);
        assert_eq!(
            image.len() as u64,
            side * side * u64::from(format::BYTES_PER_PIXEL)
        );
    }

    fn cursor_move(&mut self, scanout: u32, _x: u32, _y: u32) {
        self.check_scanout(scanout);
    }

    fn cursor_hide(&mut self, scanout: u32) {
        self.check_scanout(scanout);
    }
}
