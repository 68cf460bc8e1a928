//! The renderer seam: what the device model needs from a 2D renderer, and
//! its implementation over `rutabaga_gfx`'s 2D component.
//!
//! Rutabaga's 2D component keeps each resource's host copy and copies a
//! rect between it and the resource's iovecs (`transfer_write`,
//! `transfer_read`); that is what this adapter uses it for. Three things
//! the device needs it cannot express, and the adapter bridges each in
//! one place: a transfer whose data starts before the rect's own position
//! in the image (rutabaga's offset is unsigned and relative to that
//! position: `UntouchedPad` in front of the backing, for that transfer
//! only), reading a rect of the host copy into a buffer of the caller's
//! (rutabaga writes it where it sits in a whole image: row by row through
//! a scratch row), and writing the host copy from anything but the
//! backing (fault injection: a scratch image attached for that one
//! transfer). Rutabaga also allocates the host copy itself, 16 bytes past
//! a page boundary, which costs every row copy from page-aligned guest
//! pages (docs/benchmarks.md, "Transfers"). A renderer that owned its host
//! copies would need none of this; it would also no longer be rutabaga.

use std::collections::HashMap;
use std::io::IoSliceMut;

use log::debug;
use rutabaga_gfx::{
    ResourceCreate3D, ResourceCreateBlob, Rutabaga, RutabagaBuilder, RutabagaComponentType,
    RutabagaHandler, RutabagaIovec, Transfer3D, RUTABAGA_BLOB_MEM_GUEST,
};

/// One host-virtual extent of a resource's backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIovec {
    pub base: *mut u8,
    pub len: usize,
}

/// A renderer error. The device model maps every one of them to an error
/// response; the message goes to the log.
#[derive(Debug, thiserror::Error)]
#[error("renderer: {0}")]
pub struct RendererError(pub String);

pub type RendererResult<T> = Result<T, RendererError>;

/// What the device model asks of a renderer. Resource ids, sizes and rects
/// have been validated by the device model before any call.
pub trait Renderer {
    /// Creates a 2D resource with a zeroed host copy of `width * height * 4` bytes.
    fn create_2d(&mut self, id: u32, format: u32, width: u32, height: u32) -> RendererResult<()>;

    /// Creates a guest-memory blob of `size` bytes with no backing yet.
    fn create_guest_blob(&mut self, id: u32, blob_flags: u32, size: u64) -> RendererResult<()>;

    /// Attaches `iovecs` as the backing of resource `id`. They are the
    /// renderer's from here on (derived from the device's extents, kept for
    /// as long as the backing is attached).
    ///
    /// # Safety
    /// Every iovec must stay valid for reads and writes until the backing
    /// is detached or the resource is unreferenced: the renderer keeps the
    /// pointers and dereferences them on later transfers.
    unsafe fn attach_backing(&mut self, id: u32, iovecs: Vec<HostIovec>) -> RendererResult<()>;

    /// Forgets the backing of resource `id` (if it has one); its host copy
    /// is kept. Cannot fail: afterwards the renderer holds no pointer into
    /// that backing, which the caller may then unmap.
    fn detach_backing(&mut self, id: u32);

    /// Copies `rect` from the backing into the host copy. The rect's first
    /// pixel is `offset` bytes into the backing and its rows are `stride`
    /// (the resource's `width * 4`) apart: the layout QEMU and the Linux
    /// driver use.
    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect2d,
        offset: u64,
        stride: u32,
    ) -> RendererResult<()>;

    /// Copies `rect` of the host copy into `dst`, rows `dst_stride` apart.
    fn read_host_copy(
        &mut self,
        id: u32,
        rect: Rect2d,
        dst: &mut [u8],
        dst_stride: u32,
    ) -> RendererResult<()>;

    /// Copies `src`, rows `src_stride` apart, into `rect` of the host copy
    /// of 2D resource `id`, bypassing its backing (which is left as it
    /// was). The inverse of [`Renderer::read_host_copy`]; the device model
    /// uses it for fault injection (`Faults::corrupt_transfers`), not on
    /// any guest request path.
    fn write_host_copy(
        &mut self,
        id: u32,
        rect: Rect2d,
        src: &[u8],
        src_stride: u32,
    ) -> RendererResult<()>;

    /// Drops the resource and its host copy.
    fn unref(&mut self, id: u32) -> RendererResult<()>;
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect2d {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl From<gpuswap_protocol::wire::Rect> for Rect2d {
    fn from(r: gpuswap_protocol::wire::Rect) -> Self {
        Rect2d {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }
    }
}

/// `rutabaga_gfx`'s 2D component behind the [`Renderer`] seam.
pub struct RutabagaRenderer {
    rutabaga: Rutabaga,
    /// Each resource's current iovecs, for transfers that need them padded.
    backings: HashMap<u32, Vec<HostIovec>>,
    /// Width and height in pixels of each 2D resource, for
    /// `write_host_copy`.
    sizes: HashMap<u32, (u32, u32)>,
}

// SAFETY: `Rutabaga` is not `Send` only because it stores its components
// and contexts as trait objects without a `Send` bound. `new` builds it
// with capset mask 0 and the 2D component as default, which creates no
// context-capable component: what remains is the 2D component (holding a
// `Send + Sync` fence handler) and resources made of heap memory and
// `RutabagaIovec`s (declared `Send` by rutabaga). `backings` holds raw
// pointers (`HostIovec`) into guest memory mappings, which are valid from
// any thread for as long as `attach_backing`'s contract keeps them
// mapped; no pointer is into thread-local data. None of it has thread
// affinity, so moving the renderer between threads is sound; the device
// model is used by one thread at a time behind the daemon's lock.
unsafe impl Send for RutabagaRenderer {}

impl RutabagaRenderer {
    /// A renderer with only rutabaga's 2D component (no capsets).
    pub fn new() -> RendererResult<Self> {
        let rutabaga = RutabagaBuilder::new(0, RutabagaHandler::new(|_| {}))
            .set_default_component(RutabagaComponentType::Rutabaga2D)
            .build()
            .map_err(|e| RendererError(format!("cannot build rutabaga 2D: {e}")))?;
        Ok(RutabagaRenderer {
            rutabaga,
            backings: HashMap::new(),
            sizes: HashMap::new(),
        })
    }
}

impl RutabagaRenderer {
    /// Gives rutabaga resource `id`'s real backing (or none) again after a
    /// transfer through a temporary one. If that fails the resource is
    /// left without a backing in rutabaga rather than with pointers into
    /// memory about to be freed.
    fn restore_backing(&mut self, id: u32) -> RendererResult<()> {
        let restored = match self.backings.get(&id) {
            Some(backing) => self.rutabaga.attach_backing(id, rutabaga_iovecs(backing)),
            None => self.rutabaga.detach_backing(id),
        };
        restored.map_err(|e| {
            let _ = self.rutabaga.detach_backing(id);
            self.backings.remove(&id);
            err("re-attach", id)(e)
        })
    }
}

/// Address space put in front of a backing for a transfer whose data
/// starts before the rect's own position: rutabaga reads a rect where it
/// sits in a whole image, so the bytes before it are never read. The pad
/// is private anonymous memory that is never touched, so however long the
/// guest makes it (up to a resource's size) it costs no RAM and needs no
/// room in --max-host-memory.
struct UntouchedPad {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl UntouchedPad {
    fn new(len: u64) -> RendererResult<Self> {
        let too_long = || RendererError(format!("a transfer pad of {len} bytes"));
        let len = usize::try_from(len).map_err(|_| too_long())?;
        // SAFETY: a new private anonymous mapping, placed by the kernel;
        // it touches no existing memory. NORESERVE: it is never written.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(too_long());
        }
        let base = std::ptr::NonNull::new(base).ok_or_else(too_long)?;
        Ok(UntouchedPad { base, len })
    }

    fn iovec(&self) -> HostIovec {
        HostIovec {
            base: self.base.as_ptr().cast(),
            len: self.len,
        }
    }
}

impl Drop for UntouchedPad {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping `new` made, which
        // nothing uses any more: rutabaga got its real backing back first
        // (see `restore_backing`).
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

fn rutabaga_iovecs(iovecs: &[HostIovec]) -> Vec<RutabagaIovec> {
    iovecs
        .iter()
        .map(|v| RutabagaIovec {
            base: v.base.cast(),
            len: v.len,
        })
        .collect()
}

fn err(what: &str, id: u32) -> impl FnOnce(rutabaga_gfx::RutabagaError) -> RendererError + '_ {
    move |e| RendererError(format!("{what} of resource {id}: {e}"))
}

impl Renderer for RutabagaRenderer {
    fn create_2d(&mut self, id: u32, format: u32, width: u32, height: u32) -> RendererResult<()> {
        // Gallium's PIPE_TEXTURE_2D and PIPE_BIND_RENDER_TARGET, which is
        // what a 2D resource is to rutabaga.
        const PIPE_TEXTURE_2D: u32 = 2;
        const PIPE_BIND_RENDER_TARGET: u32 = 2;
        let args = ResourceCreate3D {
            target: PIPE_TEXTURE_2D,
            format,
            bind: PIPE_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        self.rutabaga
            .resource_create_3d(id, args)
            .map_err(err("create", id))?;
        self.sizes.insert(id, (width, height));
        Ok(())
    }

    fn create_guest_blob(&mut self, id: u32, blob_flags: u32, size: u64) -> RendererResult<()> {
        let args = ResourceCreateBlob {
            blob_mem: RUTABAGA_BLOB_MEM_GUEST,
            blob_flags,
            blob_id: 0,
            size,
        };
        self.rutabaga
            .resource_create_blob(0, id, args, None, None)
            .map_err(err("create blob", id))
    }

    unsafe fn attach_backing(&mut self, id: u32, iovecs: Vec<HostIovec>) -> RendererResult<()> {
        self.rutabaga
            .attach_backing(id, rutabaga_iovecs(&iovecs))
            .map_err(err("attach", id))?;
        self.backings.insert(id, iovecs);
        Ok(())
    }

    fn detach_backing(&mut self, id: u32) {
        self.backings.remove(&id);
        // Rutabaga refuses only a resource it does not know, which has no
        // backing to forget either.
        if let Err(e) = self.rutabaga.detach_backing(id) {
            debug!("detach of resource {id}: {e}");
        }
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect2d,
        offset: u64,
        stride: u32,
    ) -> RendererResult<()> {
        // Rutabaga adds the rect's own position to the offset; take it off
        // so the offset means what it does in QEMU and the Linux driver.
        let position = u64::from(rect.y) * u64::from(stride) + u64::from(rect.x) * 4;
        if let Some(base) = offset.checked_sub(position) {
            let transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, base);
            return self
                .rutabaga
                .transfer_write(0, id, transfer, None)
                .map_err(err("transfer", id));
        }
        // The rect's data starts before its own position (e.g. a packed
        // sub-rect at offset 0). Rutabaga has no negative base: put a pad
        // of the difference in front of the backing for this one transfer.
        let backing = self
            .backings
            .get(&id)
            .ok_or_else(|| RendererError(format!("transfer of resource {id}: no backing")))?;
        let pad = UntouchedPad::new(position - offset)?;
        let mut padded = vec![pad.iovec()];
        padded.extend_from_slice(backing);
        let transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
        let result = self
            .rutabaga
            .attach_backing(id, rutabaga_iovecs(&padded))
            .and_then(|_| self.rutabaga.transfer_write(0, id, transfer, None));
        // Put the real backing back before `pad` goes away.
        self.restore_backing(id)?;
        result.map_err(err("transfer", id))
    }

    fn read_host_copy(
        &mut self,
        id: u32,
        rect: Rect2d,
        dst: &mut [u8],
        dst_stride: u32,
    ) -> RendererResult<()> {
        if rect.x == 0 && rect.y == 0 {
            let mut transfer = Transfer3D::new_2d(0, 0, rect.width, rect.height, 0);
            transfer.stride = dst_stride;
            return self
                .rutabaga
                .transfer_read(0, id, transfer, Some(IoSliceMut::new(dst)))
                .map_err(err("read", id));
        }
        // Rutabaga writes the rect where it sits in a whole image
        // (`y * stride + x * 4` into `dst`), not at the start of `dst`. Read
        // row by row with stride 0 instead: each row then lands `x * 4`
        // bytes into a scratch row, and is copied from there.
        let skip = rect.x as usize * 4;
        let row = rect.width as usize * 4;
        let mut scratch = vec![0u8; skip + row];
        for y in 0..rect.height {
            let transfer = Transfer3D::new_2d(rect.x, rect.y + y, rect.width, 1, 0);
            self.rutabaga
                .transfer_read(0, id, transfer, Some(IoSliceMut::new(&mut scratch)))
                .map_err(err("read", id))?;
            let start = y as usize * dst_stride as usize;
            let line = dst.get_mut(start..start + row).ok_or_else(|| {
                RendererError(format!("read of resource {id}: {rect:?} does not fit dst"))
            })?;
            line.copy_from_slice(&scratch[skip..]);
        }
        Ok(())
    }

    fn write_host_copy(
        &mut self,
        id: u32,
        rect: Rect2d,
        src: &[u8],
        src_stride: u32,
    ) -> RendererResult<()> {
        if rect.width == 0 || rect.height == 0 {
            return Ok(());
        }
        let (width, height) = *self.sizes.get(&id).ok_or_else(|| {
            RendererError(format!("write of resource {id}: not a live 2D resource"))
        })?;
        let inside =
            |pos: u32, len: u32, limit: u32| pos.checked_add(len).is_some_and(|e| e <= limit);
        if !inside(rect.x, rect.width, width) || !inside(rect.y, rect.height, height) {
            return Err(RendererError(format!(
                "write of resource {id}: {rect:?} outside {width}x{height}"
            )));
        }
        // Rutabaga writes a host copy only from the backing, reading the
        // rect where it sits in a whole image (`y * stride + x * 4`, rows
        // the resource's stride apart). Lay `src` out so in a scratch
        // image, make that the backing for this one transfer, and put the
        // real backing (or none) back. The scratch is at most the size of
        // the host copy, and only its rows inside `rect` are read.
        let stride = width as usize * 4;
        let row = rect.width as usize * 4;
        let start = rect.y as usize * stride + rect.x as usize * 4;
        // The image before `start` is never read: a pad, not memory.
        let pad = (start > 0)
            .then(|| UntouchedPad::new(start as u64))
            .transpose()?;
        let mut image = vec![0u8; (rect.height as usize - 1) * stride + row];
        for y in 0..rect.height as usize {
            let from = y * src_stride as usize;
            let line = src.get(from..from + row).ok_or_else(|| {
                RendererError(format!("write of resource {id}: {rect:?} does not fit src"))
            })?;
            let at = y * stride;
            image[at..at + row].copy_from_slice(line);
        }
        let mut scratch: Vec<HostIovec> = pad.iter().map(UntouchedPad::iovec).collect();
        scratch.push(HostIovec {
            base: image.as_mut_ptr(),
            len: image.len(),
        });
        let transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
        let result = self
            .rutabaga
            .attach_backing(id, rutabaga_iovecs(&scratch))
            .and_then(|_| self.rutabaga.transfer_write(0, id, transfer, None));
        // Put the real backing back before `image` goes away.
        self.restore_backing(id)?;
        result.map_err(err("write", id))
    }

    fn unref(&mut self, id: u32) -> RendererResult<()> {
        self.backings.remove(&id);
        self.sizes.remove(&id);
        self.rutabaga.unref_resource(id).map_err(err("unref", id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_and_read_back_through_rutabaga() {
        let mut r = RutabagaRenderer::new().unwrap();
        r.create_2d(1, gpuswap_protocol::format::B8G8R8X8_UNORM, 4, 2)
            .unwrap();
        let mut backing: Vec<u8> = (0..32).collect();
        let iov = [HostIovec {
            base: backing.as_mut_ptr(),
            len: backing.len(),
        }];
        // SAFETY: `backing` outlives the attachment: it is detached below.
        unsafe { r.attach_backing(1, iov.to_vec()).unwrap() };
        let full = Rect2d {
            x: 0,
            y: 0,
            width: 4,
            height: 2,
        };
        r.transfer_to_host_2d(1, full, 0, 16).unwrap();
        r.detach_backing(1);
        // Detached: the host copy stays, transfers fail.
        assert!(r.transfer_to_host_2d(1, full, 0, 16).is_err());
        let mut out = vec![0u8; 32];
        r.read_host_copy(1, full, &mut out, 16).unwrap();
        assert_eq!(out, backing);
        r.unref(1).unwrap();
    }

    #[test]
    fn packed_sub_rect_before_its_position_lands_where_it_belongs() {
        let mut r = RutabagaRenderer::new().unwrap();
        r.create_2d(1, gpuswap_protocol::format::B8G8R8X8_UNORM, 4, 2)
            .unwrap();
        // Row 1 of the image, packed at the start of the backing (offset 0
        // is before the rect's own position 16): QEMU's convention.
        let mut backing: Vec<u8> = (100..132).collect();
        let iov = [HostIovec {
            base: backing.as_mut_ptr(),
            len: backing.len(),
        }];
        // SAFETY: `backing` outlives the attachment: it is unreferenced below.
        unsafe { r.attach_backing(1, iov.to_vec()).unwrap() };
        let row1 = Rect2d {
            x: 0,
            y: 1,
            width: 4,
            height: 1,
        };
        r.transfer_to_host_2d(1, row1, 0, 16).unwrap();
        let mut image = vec![0u8; 32];
        let full = Rect2d {
            x: 0,
            y: 0,
            width: 4,
            height: 2,
        };
        r.read_host_copy(1, full, &mut image, 16).unwrap();
        assert_eq!(&image[..16], &[0u8; 16], "row 0 untouched");
        assert_eq!(&image[16..], &backing[..16], "row 1 from the packed data");
        // The real backing is back: an ordinary transfer still works.
        r.transfer_to_host_2d(1, full, 0, 16).unwrap();
        r.read_host_copy(1, full, &mut image, 16).unwrap();
        assert_eq!(image, backing);
        r.unref(1).unwrap();
    }

    #[test]
    fn write_host_copy_changes_only_the_rect_and_keeps_the_backing() {
        let mut r = RutabagaRenderer::new().unwrap();
        r.create_2d(1, gpuswap_protocol::format::B8G8R8X8_UNORM, 4, 3)
            .unwrap();
        let full = Rect2d {
            x: 0,
            y: 0,
            width: 4,
            height: 3,
        };
        // Without a backing: written, and still without one after.
        let inner = Rect2d {
            x: 1,
            y: 1,
            width: 2,
            height: 2,
        };
        let src: Vec<u8> = (200..216).collect();
        r.write_host_copy(1, inner, &src, 8).unwrap();
        let mut image = vec![0u8; 48];
        r.read_host_copy(1, full, &mut image, 16).unwrap();
        let mut expected = vec![0u8; 48];
        expected[20..28].copy_from_slice(&src[..8]);
        expected[36..44].copy_from_slice(&src[8..]);
        assert_eq!(image, expected);
        assert!(r.transfer_to_host_2d(1, full, 0, 16).is_err(), "no backing");

        // With a backing: it is the backing again afterwards.
        let mut backing: Vec<u8> = (0..48).collect();
        let iov = [HostIovec {
            base: backing.as_mut_ptr(),
            len: backing.len(),
        }];
        // SAFETY: `backing` outlives the attachment: it is unreferenced below.
        unsafe { r.attach_backing(1, iov.to_vec()).unwrap() };
        let pixel = Rect2d {
            x: 3,
            y: 2,
            width: 1,
            height: 1,
        };
        r.write_host_copy(1, pixel, &[9, 9, 9, 9], 4).unwrap();
        r.read_host_copy(1, full, &mut image, 16).unwrap();
        expected[44..48].copy_from_slice(&[9; 4]);
        assert_eq!(image, expected);
        r.transfer_to_host_2d(1, full, 0, 16).unwrap();
        r.read_host_copy(1, full, &mut image, 16).unwrap();
        assert_eq!(image, backing);

        // src too short, a rect outside, and no such resource: errors,
        // not panics.
        assert!(r.write_host_copy(1, inner, &src[..12], 8).is_err());
        let outside = Rect2d { x: 3, ..inner };
        assert!(r.write_host_copy(1, outside, &src, 8).is_err());
        r.unref(1).unwrap();
        assert!(r.write_host_copy(1, pixel, &[0; 4], 4).is_err());
    }
}
