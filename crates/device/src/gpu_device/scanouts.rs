//! Scanouts, what they show and the display they send it to, and the
//! cursor.

use gpuswap_protocol::wire::{self, DisplayOne, MAX_SCANOUTS};
use gpuswap_protocol::{edid, format, ErrorCode, Response};
use log::debug;
use vm_memory::GuestMemoryBackend;

use super::{fail, Backing, CmdResult, Failure, GpuDevice, ResourceKind};
use crate::display::{DisplayMode, CURSOR_SIZE};
use crate::limited_warn;
use crate::memory;
use crate::renderer::{Rect2d, Renderer};
use crate::trace::EventKind;

/// What a scanout shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanoutSource {
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
    pub(super) fn resource_id(&self) -> u32 {
        match *self {
            ScanoutSource::Resource2d { id, .. } | ScanoutSource::Blob { id, .. } => id,
        }
    }

    pub(super) fn rect(&self) -> Rect2d {
        match *self {
            ScanoutSource::Resource2d { rect, .. } | ScanoutSource::Blob { rect, .. } => rect,
        }
    }
}

/// The largest display buffer kept between updates (a DCI 4K frame, 35
/// MB); a larger update allocates its own and gives it back, so what a
/// guest can make the daemon hold outside `--max-host-memory` stays small.
const MAX_KEPT_DISPLAY_PIXELS: usize = 4096 * 2160 * format::BYTES_PER_PIXEL as usize;

impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    pub(super) fn display_info(&mut self) -> Response {
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

    pub(super) fn get_edid(&mut self, scanout: u32) -> CmdResult {
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

    pub(super) fn set_scanout(&mut self, args: &wire::SetScanout, name: &'static str) -> CmdResult {
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

    pub(super) fn set_scanout_blob(
        &mut self,
        args: &wire::SetScanoutBlob,
        name: &'static str,
    ) -> CmdResult {
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

    pub(super) fn flush(&mut self, id: u32, rect: Rect2d, name: &'static str) -> CmdResult {
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

    pub(super) fn update_cursor(
        &mut self,
        args: &wire::UpdateCursor,
        name: &'static str,
    ) -> CmdResult {
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

    pub(super) fn move_cursor(&mut self, args: &wire::UpdateCursor) {
        let pos = args.pos;
        if pos.scanout_id as usize >= self.scanouts.len() {
            debug!("move_cursor: scanout {} does not exist", pos.scanout_id);
            return;
        }
        if let Some(d) = self.display.as_mut() {
            d.cursor_move(pos.scanout_id, pos.x, pos.y);
        }
    }
}
