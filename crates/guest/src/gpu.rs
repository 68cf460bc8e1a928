//! A virtio-gpu session: the open card, its parameters, and the buffer objects
//! created through it (with their mappings). Everything is released on drop.

use std::collections::BTreeMap;
use std::path::Path;

use nix::errno::Errno;
use serde::Serialize;

use crate::drm::{Card, DriverVersion, Mapping};
use crate::error::{Error, Result};
use crate::virtgpu::{self, Region};
use crate::{kms, pattern, uapi};
use gpuswap_api::agent::{DeviceParams, Framebuffer};

/// Default 2D format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM (= DRM XRGB8888 on LE).
pub const DEFAULT_FORMAT: u32 = uapi::VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;

/// What kind of BO and the geometry needed to transfer / scan it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BoKind {
    #[serde(rename = "2d")]
    TwoD {
        width: u32,
        height: u32,
        format: u32,
        stride: u32,
    },
    Blob {
        blob_flags: u32,
    },
    Dumb {
        width: u32,
        height: u32,
        stride: u32,
    },
}

/// A buffer object held by this session.
#[derive(Debug)]
pub struct Bo {
    pub handle: u32,
    pub res_id: u32,
    pub kind: BoKind,
    /// GEM object size (page aligned): what is mapped, written and verified.
    pub size: u64,
    /// Bytes that make up the resource's content: stride * height for 2D and
    /// dumb BOs (= the host's copy), the whole size for blobs. `hash` covers these.
    pub content_size: u64,
    map: Option<Mapping>,
}

/// Summary of a BO, as the agent reports it.
#[derive(Debug, Clone, Serialize)]
pub struct BoSummary {
    pub handle: u32,
    pub res_id: u32,
    pub size: u64,
    pub content_size: u64,
    pub mapped: bool,
    #[serde(flatten)]
    pub kind: BoKind,
}

impl Bo {
    pub fn summary(&self) -> BoSummary {
        BoSummary {
            handle: self.handle,
            res_id: self.res_id,
            size: self.size,
            content_size: self.content_size,
            mapped: self.map.is_some(),
            kind: self.kind,
        }
    }
}

/// `hash` over the content bytes, `hash_full` over the whole BO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashes {
    pub hash: u64,
    pub hash_full: u64,
}

/// Optional transfer box; missing fields default to the whole resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionArgs {
    pub x: Option<u32>,
    pub y: Option<u32>,
    pub w: Option<u32>,
    pub h: Option<u32>,
    pub offset: Option<u32>,
}

/// Framebuffer geometry given to `scanout`: required (width, height) for a
/// blob, which has none of its own; not accepted for 2D and dumb BOs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FbArgs {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Bytes per row; default `width * 4`.
    pub stride: Option<u32>,
}

/// An open virtio-gpu device plus the BOs created through it.
#[derive(Debug)]
pub struct Gpu {
    card: Card,
    pub driver: DriverVersion,
    pub params: DeviceParams,
    bos: BTreeMap<u32, Bo>,
    /// The framebuffer currently kept on scanout.
    scanout: Option<Framebuffer>,
}

impl Gpu {
    /// Open the virtio-gpu card (see [`Card::open_virtio_gpu`]) and query it.
    pub fn open(card: Option<&Path>) -> Result<Gpu> {
        let card = Card::open_virtio_gpu(card)?;
        let driver = card.version()?;
        let params = virtgpu::query_params(&card);
        Ok(Gpu {
            card,
            driver,
            params,
            bos: BTreeMap::new(),
            scanout: None,
        })
    }

    /// The open card (for KMS queries and ioctls not wrapped here).
    pub fn card(&self) -> &Card {
        &self.card
    }

    pub fn card_path(&self) -> &Path {
        self.card.path()
    }

    pub fn bos(&self) -> impl Iterator<Item = &Bo> {
        self.bos.values()
    }

    pub fn bo(&self, handle: u32) -> Result<&Bo> {
        self.bos
            .get(&handle)
            .ok_or_else(|| Error::msg(format!("unknown handle {handle}")))
    }

    /// Register a new handle: read RESOURCE_INFO; on failure close the handle.
    fn adopt(&mut self, handle: u32, kind: BoKind, content_size: Option<u64>) -> Result<&Bo> {
        let info = match virtgpu::resource_info(&self.card, handle) {
            Ok(info) => info,
            Err(e) => {
                let _ = self.card.gem_close(handle);
                return Err(e);
            }
        };
        let size = u64::from(info.size);
        let bo = Bo {
            handle,
            res_id: info.res_id,
            kind,
            size,
            content_size: content_size.unwrap_or(size).min(size),
            map: None,
        };
        self.bos.insert(handle, bo);
        Ok(&self.bos[&handle])
    }

    /// DRM_IOCTL_VIRTGPU_RESOURCE_CREATE (2D path), `format` a VIRTIO_GPU_FORMAT_*.
    pub fn create_2d(&mut self, width: u32, height: u32, format: u32) -> Result<&Bo> {
        let (stride, size) = virtgpu::layout_2d(width, height, format)?;
        let created = virtgpu::resource_create_2d(&self.card, width, height, format, size)?;
        let kind = BoKind::TwoD {
            width,
            height,
            format,
            stride,
        };
        self.adopt(created.handle, kind, Some(u64::from(size)))
    }

    /// A mappable guest-memory blob; a clear EOPNOTSUPP error if the device
    /// does not offer blob resources.
    pub fn create_blob(&mut self, size: u64, blob_flags: u32) -> Result<&Bo> {
        if self.params.resource_blob != Some(true) {
            return Err(Error::with_errno(
                "blob resources not offered by this device (VIRTGPU_PARAM_RESOURCE_BLOB is 0: \
                 VIRTIO_GPU_F_RESOURCE_BLOB not negotiated)",
                Errno::EOPNOTSUPP,
            ));
        }
        let created = virtgpu::resource_create_blob_guest(&self.card, size, blob_flags)?;
        self.adopt(created.handle, BoKind::Blob { blob_flags }, None)
    }

    /// DRM_IOCTL_MODE_CREATE_DUMB (32 bpp). On a blob-capable 2D device the
    /// kernel makes it a guest blob.
    pub fn create_dumb(&mut self, width: u32, height: u32) -> Result<&Bo> {
        let dumb = kms::create_dumb(&self.card, width, height)?;
        let kind = BoKind::Dumb {
            width,
            height,
            stride: dumb.pitch,
        };
        let content = u64::from(dumb.pitch) * u64::from(height);
        self.adopt(dumb.handle, kind, Some(content))
    }

    /// The BO's mapping, created on first use and kept until close (so the
    /// shrinker's zap + refault path is exercised by later accesses).
    fn mapping(&mut self, handle: u32) -> Result<(&mut Mapping, u64)> {
        let card = &self.card;
        let bo = self
            .bos
            .get_mut(&handle)
            .ok_or_else(|| Error::msg(format!("unknown handle {handle}")))?;
        if bo.map.is_none() {
            let offset = match bo.kind {
                BoKind::Dumb { .. } => kms::map_dumb(card, handle)?,
                _ => virtgpu::map_offset(card, handle)?,
            };
            let len = usize::try_from(bo.size)
                .map_err(|_| Error::msg(format!("BO size {} too large to map", bo.size)))?;
            bo.map = Some(card.map(offset, len)?);
        }
        let content = bo.content_size;
        let map = bo.map.as_mut().expect("mapping just ensured");
        Ok((map, content))
    }

    fn hashes(bytes: &[u8], content: u64) -> Hashes {
        let content = usize::try_from(content)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Hashes {
            hash: pattern::content_hash(&bytes[..content]),
            hash_full: pattern::content_hash(bytes),
        }
    }

    /// Fill the whole BO with the pattern for (seed, bo, version).
    pub fn write(&mut self, handle: u32, seed: u64, bo: u64, version: u64) -> Result<Hashes> {
        self.write_kind(handle, pattern::Pattern::Random, seed, bo, version)
    }

    /// Fill the whole BO with the `kind` pattern for (seed, bo, version).
    pub fn write_kind(
        &mut self,
        handle: u32,
        kind: pattern::Pattern,
        seed: u64,
        bo: u64,
        version: u64,
    ) -> Result<Hashes> {
        let (map, content) = self.mapping(handle)?;
        let bytes = map.as_mut_slice();
        pattern::fill_kind(kind, bytes, seed, bo, version);
        Ok(Self::hashes(bytes, content))
    }

    /// Hash the BO's current content through its mapping.
    pub fn hash(&mut self, handle: u32) -> Result<Hashes> {
        let (map, content) = self.mapping(handle)?;
        Ok(Self::hashes(map.as_slice(), content))
    }

    /// Compare the whole BO with the pattern; the first differing byte offset.
    pub fn verify(
        &mut self,
        handle: u32,
        seed: u64,
        bo: u64,
        version: u64,
    ) -> Result<Option<usize>> {
        self.verify_kind(handle, pattern::Pattern::Random, seed, bo, version)
    }

    /// As [`Gpu::verify`], for the `kind` pattern.
    pub fn verify_kind(
        &mut self,
        handle: u32,
        kind: pattern::Pattern,
        seed: u64,
        bo: u64,
        version: u64,
    ) -> Result<Option<usize>> {
        let (map, _) = self.mapping(handle)?;
        Ok(pattern::first_mismatch_kind(
            kind,
            map.as_slice(),
            seed,
            bo,
            version,
        ))
    }

    /// DRM_IOCTL_VIRTGPU_MADVISE; returns `retained` (false: purged).
    pub fn madvise(&mut self, handle: u32, madv: u32) -> Result<bool> {
        self.bo(handle)?;
        virtgpu::madvise(&self.card, handle, madv)
    }

    /// Reads one byte at `offset` of the BO's mapping in a forked child, so
    /// that a SIGBUS (a purged BO) kills the child, not the agent. Returns
    /// the signal that ended the child, or `None` if the read worked.
    /// Reads the BO's first byte through its mapping (a fault brings an
    /// evicted BO's pages back).
    pub fn first_byte(&mut self, handle: u32) -> Result<u8> {
        let (map, _) = self.mapping(handle)?;
        let first = map
            .as_slice()
            .first()
            .ok_or_else(|| Error::msg(format!("BO {handle} is empty")))?;
        // SAFETY: `first` is a live byte of the mapping; the volatile read
        // keeps the access (and its fault) from being optimized away.
        Ok(unsafe { std::ptr::read_volatile(first) })
    }

    pub fn touch(&mut self, handle: u32, offset: u64) -> Result<Option<i32>> {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};

        let (map, _) = self.mapping(handle)?;
        let len = map.len();
        let at = usize::try_from(offset)
            .ok()
            .filter(|&at| at < len)
            .ok_or_else(|| Error::msg(format!("offset {offset} outside the {len}-byte BO")))?;
        let ptr = map.as_slice()[at..].as_ptr();
        // SAFETY: the child only reads one byte of a live mapping and exits
        // with `_exit` (async-signal-safe), which is all that is allowed
        // after fork in a possibly multi-threaded process.
        match unsafe { fork() }.map_err(|e| Error::sys("fork", e))? {
            ForkResult::Child => {
                // SAFETY: `ptr` points into the mapping inherited from the parent.
                let _ = unsafe { std::ptr::read_volatile(ptr) };
                // SAFETY: `_exit` ends the child without running any parent state.
                unsafe { nix::libc::_exit(0) }
            }
            ForkResult::Parent { child } => match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => Ok(None),
                Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(sig as i32)),
                Ok(other) => Err(Error::msg(format!("touch child: {other:?}"))),
                Err(e) => Err(Error::sys("waitpid", e)),
            },
        }
    }

    fn region(&self, handle: u32, args: RegionArgs) -> Result<Region> {
        region_for(self.bo(handle)?.kind, args)
    }

    /// TRANSFER_TO_HOST, WAIT on the BO, then optionally a fence barrier.
    ///
    /// Without virgl the 6.12 kernel sends TRANSFER_TO_HOST_2D unfenced, so
    /// WAIT returns at once. The barrier makes the reply mean "the host has
    /// processed the transfer": it creates a 1x1 2D resource (whose
    /// RESOURCE_CREATE_2D *is* fenced), waits for that fence and closes it; the
    /// control queue is FIFO and hosts process it in order. Default: barrier
    /// when the device has no 3D. Returns the barrier resource id if one ran.
    pub fn transfer_to_host(
        &mut self,
        handle: u32,
        args: RegionArgs,
        barrier: Option<bool>,
    ) -> Result<Option<u32>> {
        let region = self.region(handle, args)?;
        virtgpu::transfer_to_host(&self.card, handle, region)?;
        virtgpu::wait(&self.card, handle, false)?;
        if barrier.unwrap_or(self.params.three_d_features != Some(true)) {
            return self.fence_barrier().map(Some);
        }
        Ok(None)
    }

    /// See [`Gpu::transfer_to_host`]: a fenced 1x1 create, waited for, closed.
    pub fn fence_barrier(&mut self) -> Result<u32> {
        let created = virtgpu::resource_create_2d(&self.card, 1, 1, DEFAULT_FORMAT, 4)
            .map_err(|e| e.context("fence barrier"))?;
        let waited = virtgpu::wait(&self.card, created.handle, false);
        let closed = self.card.gem_close(created.handle);
        waited.and(closed).map_err(|e| e.context("fence barrier"))?;
        Ok(created.res_id)
    }

    /// TRANSFER_FROM_HOST then WAIT (ENOSYS from the kernel without virgl).
    pub fn transfer_from_host(&mut self, handle: u32, args: RegionArgs) -> Result<()> {
        let region = self.region(handle, args)?;
        virtgpu::transfer_from_host(&self.card, handle, region)?;
        virtgpu::wait(&self.card, handle, false)
    }

    /// DRM_IOCTL_VIRTGPU_WAIT.
    pub fn wait(&mut self, handle: u32, nowait: bool) -> Result<()> {
        self.bo(handle)?;
        virtgpu::wait(&self.card, handle, nowait)
    }

    /// DRM_IOCTL_VIRTGPU_RESOURCE_INFO for a held BO.
    pub fn info(&self, handle: u32) -> Result<virtgpu::ResourceInfo> {
        self.bo(handle)?;
        virtgpu::resource_info(&self.card, handle)
    }

    /// Unmap and close a BO (turning the scanout off first if it shows it).
    pub fn close(&mut self, handle: u32) -> Result<()> {
        self.bo(handle)?;
        let mut first_err = None;
        if self.scanout.as_ref().is_some_and(|s| s.handle == handle) {
            first_err = self.scanout_off().err();
        }
        let mut bo = self.bos.remove(&handle).expect("checked above");
        drop(bo.map.take());
        let closed = match bo.kind {
            BoKind::Dumb { .. } => kms::destroy_dumb(&self.card, handle),
            _ => self.card.gem_close(handle),
        };
        match (first_err, closed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Show a 2D (XRGB/ARGB-compatible), dumb or guest blob BO on the first
    /// usable connector/CRTC, replacing any previous scanout. `fb` gives a
    /// blob its geometry (see [`fb_geometry`]); the kernel's plane update then
    /// sends SET_SCANOUT_BLOB for it (RESOURCE_FLUSH as for any scanout).
    pub fn scanout(&mut self, handle: u32, fb: FbArgs) -> Result<Framebuffer> {
        let bo = self.bo(handle)?;
        let (width, height, stride) = fb_geometry(handle, bo.kind, bo.size, fb)?;
        let pipe = kms::pick_pipe(&self.card, width, height)?;
        let fb_id = kms::add_fb2_xrgb8888(&self.card, handle, width, height, stride)?;
        if let Err(e) = kms::set_crtc(
            &self.card,
            pipe.crtc_id,
            fb_id,
            Some(pipe.connector_id),
            Some(pipe.mode),
        ) {
            let _ = kms::rm_fb(&self.card, fb_id);
            return Err(e);
        }
        let new = Framebuffer {
            handle,
            fb_id,
            crtc_id: pipe.crtc_id,
            connector_id: pipe.connector_id,
            mode: kms::mode_name(&pipe.mode),
            width,
            height,
            stride,
        };
        if let Some(old) = self.scanout.replace(new.clone()) {
            kms::rm_fb(&self.card, old.fb_id)?;
        }
        Ok(new)
    }

    /// Turn the scanout CRTC off and remove its framebuffer. Returns whether
    /// there was a scanout.
    pub fn scanout_off(&mut self) -> Result<bool> {
        let Some(s) = self.scanout.take() else {
            return Ok(false);
        };
        let off = kms::set_crtc(&self.card, s.crtc_id, 0, None, None);
        let rm = kms::rm_fb(&self.card, s.fb_id);
        off.and(rm).map(|()| true)
    }

    /// `(address, length)` of every BO mapping this process holds (what a
    /// forked child that keeps running must unmap).
    pub fn mapped_ranges(&self) -> Vec<(usize, usize)> {
        self.bos
            .values()
            .filter_map(|bo| bo.map.as_ref())
            .map(|m| (m.addr(), m.len()))
            .collect()
    }

    /// The current scanout, if any.
    pub fn current_scanout(&self) -> Option<&Framebuffer> {
        self.scanout.as_ref()
    }

    /// Release everything (also done on drop); returns how many BOs were closed.
    pub fn close_all(&mut self) -> usize {
        if let Err(e) = self.scanout_off() {
            eprintln!("gpuswap-guest: cleanup: {e}");
        }
        let handles: Vec<u32> = self.bos.keys().copied().collect();
        for &h in &handles {
            if let Err(e) = self.close(h) {
                eprintln!("gpuswap-guest: cleanup: {e}");
            }
        }
        handles.len()
    }
}

/// The XRGB8888 framebuffer `(width, height, stride)` for BO `handle` of
/// `kind` and GEM `size`. 2D (B8G8R8X8/B8G8R8A8) and dumb BOs use their own
/// geometry and refuse `args`. A blob needs `args.width` and `args.height`
/// (non-zero); `args.stride` defaults to `width * 4`, must be at least that,
/// and the last row must end within the BO: `(height - 1) * stride +
/// width * 4 <= size`, the check DRM makes in ADDFB2 (caught here with a
/// clearer message).
pub fn fb_geometry(handle: u32, kind: BoKind, size: u64, args: FbArgs) -> Result<(u32, u32, u32)> {
    match kind {
        BoKind::TwoD {
            width,
            height,
            stride,
            format: DEFAULT_FORMAT | uapi::VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
        }
        | BoKind::Dumb {
            width,
            height,
            stride,
        } => {
            if args != FbArgs::default() {
                return Err(Error::msg(format!(
                    "handle {handle}: width/height/stride are only for blob BOs \
                     (a {} BO has its own geometry)",
                    match kind {
                        BoKind::Dumb { .. } => "dumb",
                        _ => "2D",
                    }
                )));
            }
            Ok((width, height, stride))
        }
        BoKind::Blob { .. } => {
            let (Some(width), Some(height)) = (args.width, args.height) else {
                return Err(Error::msg(format!(
                    "handle {handle} is a blob: scanout needs width and height"
                )));
            };
            if width == 0 || height == 0 {
                return Err(Error::msg(format!(
                    "scanout of {width}x{height}: width and height must be non-zero"
                )));
            }
            let row = u64::from(width) * 4;
            let stride = match args.stride {
                Some(stride) => stride,
                None => u32::try_from(row).map_err(|_| {
                    Error::msg(format!("width {width}: width * 4 overflows the stride"))
                })?,
            };
            if u64::from(stride) < row {
                return Err(Error::msg(format!(
                    "stride {stride} is less than width * 4 = {row}"
                )));
            }
            let need = u64::from(height - 1) * u64::from(stride) + row;
            if need > size {
                return Err(Error::msg(format!(
                    "handle {handle}: {width}x{height} XRGB8888 with stride {stride} needs \
                     {need} bytes, the blob has {size}"
                )));
            }
            Ok((width, height, stride))
        }
        other => Err(Error::msg(format!(
            "handle {handle} cannot be scanned out as XRGB8888 ({other:?})"
        ))),
    }
}

/// The transfer box: missing x/y default to 0, w/h to the rest of the
/// resource, and `offset` to where (x, y) lies in the backing
/// (`y * stride + x * 4`, as the kernel computes it for dumb BOs).
fn region_for(kind: BoKind, args: RegionArgs) -> Result<Region> {
    let (width, height, stride) = match kind {
        BoKind::TwoD {
            width,
            height,
            stride,
            ..
        }
        | BoKind::Dumb {
            width,
            height,
            stride,
        } => (width, height, stride),
        BoKind::Blob { .. } => (0, 0, 0),
    };
    let x = args.x.unwrap_or(0);
    let y = args.y.unwrap_or(0);
    let offset = match args.offset {
        Some(offset) => offset,
        None => y
            .checked_mul(stride)
            .and_then(|o| o.checked_add(x.checked_mul(4)?))
            .ok_or_else(|| Error::msg("transfer offset overflows u32"))?,
    };
    Ok(Region {
        x,
        y,
        w: args.w.unwrap_or(width.saturating_sub(x)),
        h: args.h.unwrap_or(height.saturating_sub(y)),
        offset,
    })
}

impl Drop for Gpu {
    fn drop(&mut self) {
        self.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_region_defaults() {
        let kind = BoKind::TwoD {
            width: 64,
            height: 32,
            format: DEFAULT_FORMAT,
            stride: 256,
        };
        let whole = region_for(kind, RegionArgs::default()).unwrap();
        assert_eq!(
            whole,
            Region {
                x: 0,
                y: 0,
                w: 64,
                h: 32,
                offset: 0
            }
        );
        let part = RegionArgs {
            x: Some(3),
            y: Some(2),
            h: Some(4),
            ..Default::default()
        };
        let r = region_for(kind, part).unwrap();
        assert_eq!((r.w, r.h, r.offset), (61, 4, 2 * 256 + 3 * 4));
        let explicit = RegionArgs {
            offset: Some(5),
            ..part
        };
        assert_eq!(region_for(kind, explicit).unwrap().offset, 5);
        let huge = RegionArgs {
            y: Some(u32::MAX),
            ..Default::default()
        };
        assert!(region_for(kind, huge).is_err());
        let blob = region_for(BoKind::Blob { blob_flags: 1 }, RegionArgs::default()).unwrap();
        assert_eq!((blob.w, blob.h, blob.offset), (0, 0, 0));
    }

    #[test]
    fn scanout_geometry() {
        let two_d = BoKind::TwoD {
            width: 64,
            height: 32,
            format: DEFAULT_FORMAT,
            stride: 256,
        };
        let none = FbArgs::default();
        assert_eq!(fb_geometry(1, two_d, 8192, none).unwrap(), (64, 32, 256));
        let dumb = BoKind::Dumb {
            width: 640,
            height: 480,
            stride: 2560,
        };
        assert_eq!(
            fb_geometry(1, dumb, 1 << 20, none).unwrap(),
            (640, 480, 2560)
        );
        let given = FbArgs {
            width: Some(64),
            height: Some(32),
            stride: None,
        };
        for kind in [two_d, dumb] {
            let e = fb_geometry(1, kind, 1 << 20, given).unwrap_err();
            assert!(e.message.contains("only for blob"), "{}", e.message);
        }
        let rgba = BoKind::TwoD {
            width: 64,
            height: 32,
            format: uapi::VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            stride: 256,
        };
        assert!(fb_geometry(1, rgba, 8192, none).is_err());

        let blob = BoKind::Blob { blob_flags: 1 };
        let e = fb_geometry(2, blob, 1 << 20, none).unwrap_err();
        assert!(
            e.message.contains("needs width and height"),
            "{}",
            e.message
        );
        let only_w = FbArgs {
            width: Some(4),
            ..none
        };
        assert!(fb_geometry(2, blob, 1 << 20, only_w).is_err());
        // 640x480x4 = 1228800 bytes = exactly 300 pages.
        let vga = FbArgs {
            width: Some(640),
            height: Some(480),
            stride: None,
        };
        assert_eq!(
            fb_geometry(2, blob, 1_228_800, vga).unwrap(),
            (640, 480, 2560)
        );
        let e = fb_geometry(2, blob, 1_228_800 - 4096, vga).unwrap_err();
        assert!(e.message.contains("needs 1228800 bytes"), "{}", e.message);
        // A wider stride: the last row only needs width * 4 bytes.
        let padded = FbArgs {
            stride: Some(4096),
            ..vga
        };
        let need = 479 * 4096 + 2560;
        assert_eq!(
            fb_geometry(2, blob, need, padded).unwrap(),
            (640, 480, 4096)
        );
        assert!(fb_geometry(2, blob, need - 1, padded).is_err());
        let narrow = FbArgs {
            stride: Some(2556),
            ..vga
        };
        let e = fb_geometry(2, blob, 1 << 30, narrow).unwrap_err();
        assert!(e.message.contains("less than width * 4"), "{}", e.message);
        let zero = FbArgs {
            height: Some(0),
            ..vga
        };
        assert!(fb_geometry(2, blob, 1 << 30, zero).is_err());
        let huge = FbArgs {
            width: Some(u32::MAX),
            height: Some(1),
            stride: None,
        };
        assert!(fb_geometry(2, blob, u64::MAX, huge)
            .unwrap_err()
            .message
            .contains("overflows"));
        let tall = FbArgs {
            width: Some(1),
            height: Some(u32::MAX),
            stride: Some(u32::MAX),
        };
        assert!(fb_geometry(2, blob, 1 << 40, tall).is_err());
    }
}
