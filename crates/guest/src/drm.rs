//! The DRM device: finding and opening the virtio-gpu card node, the core
//! ioctls (VERSION, GEM_CLOSE) and mmap of buffer objects.

use std::ffi::c_void;
use std::fs::{self, OpenOptions};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::devnode;
use crate::error::{Error, Result};
use crate::uapi;

/// The driver name virtio-gpu reports through DRM_IOCTL_VERSION.
pub const VIRTIO_GPU_DRIVER: &str = "virtio_gpu";

/// Signature of the nix-generated ioctl wrappers.
pub type IoctlFn<T> = unsafe fn(c_int, *mut T) -> nix::Result<c_int>;

/// An open DRM card node.
#[derive(Debug)]
pub struct Card {
    fd: OwnedFd,
    path: PathBuf,
}

/// What DRM_IOCTL_VERSION says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverVersion {
    pub name: String,
    pub major: i32,
    pub minor: i32,
    pub patchlevel: i32,
    pub desc: String,
}

impl Card {
    /// Open a card node read-write.
    pub fn open_path(path: &Path) -> Result<Card> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), &e))?;
        Ok(Card {
            fd: file.into(),
            path: path.to_owned(),
        })
    }

    /// Open `explicit` if given, else `/dev/dri/card0` if it is virtio_gpu, else
    /// the first `/dev/dri/cardN` (by N) whose driver is virtio_gpu. Missing
    /// `/dev/dri/cardN` nodes are created from `/sys/class/drm/cardN/dev`.
    pub fn open_virtio_gpu(explicit: Option<&Path>) -> Result<Card> {
        if let Some(path) = explicit {
            return Card::open_path(path);
        }
        let mut tried = Vec::new();
        for n in card_numbers() {
            let node = PathBuf::from(format!("/dev/dri/card{n}"));
            let sysfs = PathBuf::from(format!("/sys/class/drm/card{n}/dev"));
            let card = devnode::ensure_char_dev(&node, &sysfs)
                .and_then(|()| Card::open_path(&node))
                .and_then(|card| card.version().map(|v| (card, v)));
            match card {
                Ok((card, v)) if v.name == VIRTIO_GPU_DRIVER => return Ok(card),
                Ok((_, v)) => tried.push(format!("{}: driver {}", node.display(), v.name)),
                Err(e) => tried.push(e.message),
            }
        }
        let detail = if tried.is_empty() {
            "no /dev/dri/card* or /sys/class/drm/card*".to_owned()
        } else {
            tried.join("; ")
        };
        Err(Error::with_errno(
            format!("no virtio_gpu DRM card found ({detail})"),
            Errno::ENODEV,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Issue an ioctl, retrying on EINTR/EAGAIN like libdrm's drmIoctl.
    ///
    /// # Safety
    /// Any user pointers stored inside `arg` must be valid for the accesses the
    /// kernel makes for this request (e.g. a buffer of the advertised length).
    pub unsafe fn ioctl<T>(&self, name: &str, f: IoctlFn<T>, arg: &mut T) -> Result<()> {
        loop {
            // SAFETY: `arg` is an exclusive reference to a live `T`, which is the
            // exact argument type the macro-generated `f` encodes in the request
            // number; `self.fd` is an open DRM fd for as long as `self` lives; the
            // caller guarantees embedded user pointers (see the function contract).
            match unsafe { f(self.fd.as_raw_fd(), arg as *mut T) } {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
                Err(e) => return Err(Error::sys(name, e)),
            }
        }
    }

    /// DRM_IOCTL_VERSION.
    pub fn version(&self) -> Result<DriverVersion> {
        let mut name = [0u8; 64];
        let mut desc = [0u8; 128];
        let mut v = uapi::drm_version {
            name_len: name.len() as u64,
            name: name.as_mut_ptr() as u64,
            desc_len: desc.len() as u64,
            desc: desc.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `name`/`desc` outlive the call and their lengths are passed in
        // name_len/desc_len (the kernel copies at most that many bytes); date is
        // a null pointer with length 0, which the kernel skips.
        unsafe { self.ioctl("DRM_IOCTL_VERSION", uapi::drm_ioctl_version, &mut v)? };
        let text = |buf: &[u8], len: u64| {
            let len = (len as usize).min(buf.len());
            String::from_utf8_lossy(&buf[..len])
                .trim_end_matches('\0')
                .to_owned()
        };
        Ok(DriverVersion {
            name: text(&name, v.name_len),
            major: v.version_major,
            minor: v.version_minor,
            patchlevel: v.version_patchlevel,
            desc: text(&desc, v.desc_len),
        })
    }

    /// DRM_IOCTL_GEM_CLOSE: drop this file's handle to a GEM object.
    pub fn gem_close(&self, handle: u32) -> Result<()> {
        let mut arg = uapi::drm_gem_close { handle, pad: 0 };
        // The write-only wrapper takes `*const T`; adapt it to the common helper.
        unsafe fn gem_close(fd: c_int, arg: *mut uapi::drm_gem_close) -> nix::Result<c_int> {
            // SAFETY: forwarded from Card::ioctl: `arg` points to a live drm_gem_close.
            unsafe { uapi::drm_ioctl_gem_close(fd, arg) }
        }
        // SAFETY: drm_gem_close has no embedded pointers.
        unsafe { self.ioctl("DRM_IOCTL_GEM_CLOSE", gem_close, &mut arg) }
    }

    /// mmap `len` bytes of the DRM fd at the fake `offset` returned by
    /// DRM_IOCTL_VIRTGPU_MAP / DRM_IOCTL_MODE_MAP_DUMB (shared, read-write).
    pub fn map(&self, offset: u64, len: usize) -> Result<Mapping> {
        let length = NonZeroUsize::new(len).ok_or_else(|| Error::msg("mmap of 0 bytes"))?;
        let off = i64::try_from(offset)
            .map_err(|_| Error::msg(format!("mmap offset {offset:#x} out of range")))?;
        // SAFETY: a fresh mapping (addr None) cannot alias any existing Rust
        // object; the DRM fd stays open while the kernel sets up the mapping and
        // the mapping itself keeps the GEM object alive afterwards.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                self.fd.as_fd(),
                off,
            )
        }
        .map_err(|e| Error::sys(format!("mmap {len} bytes at offset {offset:#x}"), e))?;
        Ok(Mapping { ptr, len })
    }
}

/// Card numbers to try: 0 first, then every `/sys/class/drm/cardN` in order.
fn card_numbers() -> Vec<u32> {
    let mut numbers: Vec<u32> = fs::read_dir("/sys/class/drm")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("card")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    if let Some(pos) = numbers.iter().position(|&n| n == 0) {
        numbers.remove(pos);
    }
    numbers.insert(0, 0);
    numbers
}

/// A shared mapping of a buffer object; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

impl Mapping {
    /// The mapping's start address.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live PROT_READ|PROT_WRITE mapping of exactly `len`
        // bytes owned by `self`; nothing else in this process references it. The
        // device only writes into it during ioctls we issue (TRANSFER_FROM_HOST),
        // which cannot run while this borrow of `self` is alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only live borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no slice into
        // the mapping can outlive `self`.
        if let Err(e) = unsafe { munmap(self.ptr, self.len) } {
            eprintln!("gpuswap-guest: munmap: {e}");
        }
    }
}
