//! Looking at resources from outside the device: what the control socket's
//! `resources` request shows, with hashes of each host copy and backing.
//!
//! Hashing reads megabytes, so it must not hold up the queues: a
//! [`ResourceSnapshot`] is taken under the caller's device lock and the
//! backing is hashed from it without the device; a host copy lives in the
//! renderer and is read in bands of rows of at most [`HOST_BAND`] bytes,
//! one short device access each, into one reused buffer. A host copy that
//! changes between two bands has no single hash; it is reported as
//! changed instead of a hash of two different states.

use std::ops::Range;
use std::sync::Arc;

use gpuswap_protocol::format;
use vm_memory::GuestMemoryBackend;
use xxhash_rust::xxh3::Xxh3;

use super::{Backing, GpuDevice, ResourceKind};
use crate::memory::{self, GuestExtent};
use crate::renderer::{Rect2d, Renderer};

/// The most host-copy bytes read in one device access.
pub const HOST_BAND: usize = 256 << 10;

/// A resource as the control socket shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResourceInfo {
    pub id: u32,
    pub kind: &'static str,
    pub format: Option<u32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub size: u64,
    pub backing: &'static str,
    pub generation: u64,
    pub entries: usize,
    pub backing_bytes: u64,
    /// xxh3-64 of the host copy (2D only), 16 hex digits.
    pub host_hash: Option<String>,
    /// xxh3-64 of the first `size` bytes of the attached backing.
    pub backing_hash: Option<String>,
    /// Set when the host copy changed while it was being hashed (there is
    /// then no `host_hash`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_changed: bool,
    pub scanouts: Vec<u32>,
    pub uuid: Option<String>,
}

/// A hash as the control socket and the guest tool print it.
pub fn hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// One resource at one moment, enough to hash it without the device.
pub struct ResourceSnapshot<M> {
    /// Everything but the hashes.
    pub info: ResourceInfo,
    kind: ResourceKind,
    extents: Vec<GuestExtent>,
    memory: Option<Arc<M>>,
    host_version: u64,
}

impl<M: GuestMemoryBackend> ResourceSnapshot<M> {
    /// xxh3-64 of the backing's first `size` bytes, read from guest memory
    /// as it is now (the guest may be writing it; the device is not
    /// needed). None when detached or no longer guest RAM.
    pub fn backing_hash(&self) -> Option<u64> {
        let memory = self.memory.as_ref()?;
        if self.extents.is_empty() {
            return None;
        }
        memory::hash_backing(&**memory, &self.extents, self.info.size).ok()
    }

    /// xxh3-64 of the host copy, read band by band through `read_band`
    /// (which gets the device for each band: see
    /// [`GpuDevice::read_host_band`]). None for a resource without a host
    /// copy; `Err(())` when it changed or went away in between.
    pub fn host_hash(
        &self,
        mut read_band: impl FnMut(u32, u64, Range<u32>, &mut [u8]) -> bool,
    ) -> Option<Result<u64, ()>> {
        let ResourceKind::TwoD { width, height, .. } = self.kind else {
            return None;
        };
        let stride = width as usize * format::BYTES_PER_PIXEL as usize;
        let rows_per_band = (HOST_BAND / stride).max(1) as u32;
        let mut band = vec![0u8; stride * rows_per_band.min(height) as usize];
        let mut hasher = Xxh3::new();
        let mut row = 0;
        while row < height {
            let rows = row..height.min(row + rows_per_band);
            let bytes = &mut band[..stride * rows.len()];
            if !read_band(self.info.id, self.host_version, rows.clone(), bytes) {
                return Some(Err(()));
            }
            hasher.update(bytes);
            row = rows.end;
        }
        Some(Ok(hasher.digest()))
    }

    /// The snapshot with both hashes filled in.
    pub fn into_info(
        self,
        read_band: impl FnMut(u32, u64, Range<u32>, &mut [u8]) -> bool,
    ) -> ResourceInfo {
        let backing_hash = self.backing_hash().map(hex);
        let host = self.host_hash(read_band);
        ResourceInfo {
            backing_hash,
            host_hash: host.and_then(Result::ok).map(hex),
            host_changed: matches!(host, Some(Err(()))),
            ..self.info
        }
    }
}

impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    /// Ids of the live resources, in order.
    pub fn resource_ids(&self) -> Vec<u32> {
        self.resources.keys().copied().collect()
    }

    /// Resource `id` as it is now, without hashes.
    pub fn snapshot(&self, id: u32) -> Option<ResourceSnapshot<M>> {
        let res = self.resources.get(&id)?;
        let kind = res.kind;
        let (format, width, height) = match kind {
            ResourceKind::TwoD {
                format,
                width,
                height,
            } => (Some(format), Some(width), Some(height)),
            ResourceKind::GuestBlob { .. } => (None, None, None),
        };
        let (extents, backing_bytes) = match &res.backing {
            Backing::Attached { extents, len } => (extents.clone(), *len),
            Backing::Detached => (Vec::new(), 0),
        };
        let info = ResourceInfo {
            id,
            kind: kind.name(),
            format,
            width,
            height,
            size: kind.content_len(),
            backing: if res.is_attached() {
                "attached"
            } else {
                "detached"
            },
            generation: res.generation,
            entries: extents.len(),
            backing_bytes,
            host_hash: None,
            backing_hash: None,
            host_changed: false,
            scanouts: (0..self.scanouts.len() as u32)
                .filter(|&s| self.scanouts[s as usize].is_some_and(|src| src.resource_id() == id))
                .collect(),
            uuid: res
                .uuid
                .map(|u| u.iter().map(|b| format!("{b:02x}")).collect()),
        };
        Some(ResourceSnapshot {
            info,
            kind,
            memory: self.mem.clone(),
            extents,
            host_version: res.host_version,
        })
    }

    /// Copies `rows` of 2D resource `id`'s host copy into `dst` (rows
    /// packed), if its host copy is still the one a snapshot saw as
    /// `host_version`.
    pub fn read_host_band(
        &mut self,
        id: u32,
        host_version: u64,
        rows: Range<u32>,
        dst: &mut [u8],
    ) -> bool {
        let Some(res) = self.resources.get(&id) else {
            return false;
        };
        let ResourceKind::TwoD { width, .. } = res.kind else {
            return false;
        };
        if res.host_version != host_version {
            return false;
        }
        let rect = Rect2d {
            x: 0,
            y: rows.start,
            width,
            height: rows.len() as u32,
        };
        self.renderer
            .read_host_copy(id, rect, dst, width * format::BYTES_PER_PIXEL)
            .is_ok()
    }

    /// Every live resource, with hashes (for in-process callers: the
    /// daemon hashes outside its device lock).
    pub fn resources(&mut self) -> Vec<ResourceInfo> {
        self.resource_ids()
            .into_iter()
            .filter_map(|id| self.resource_info(id))
            .collect()
    }

    /// One live resource, with hashes.
    pub fn resource_info(&mut self, id: u32) -> Option<ResourceInfo> {
        let snapshot = self.snapshot(id)?;
        Some(
            snapshot
                .into_info(|id, version, rows, dst| self.read_host_band(id, version, rows, dst)),
        )
    }
}
