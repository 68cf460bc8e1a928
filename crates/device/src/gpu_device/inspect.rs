//! A resource seen from outside the device, as typed data: its state at
//! one moment, its host copy in bands of rows, its backing's bytes. What
//! the control plane shows (and hashes) and what tests check is built on
//! this; the device formats nothing.
//!
//! Reading megabytes must not hold up the queues: a [`ResourceSnapshot`]
//! is taken under the caller's device lock and the backing is read from it
//! without the device; a host copy lives in the renderer and is read in
//! bands ([`GpuDevice::read_host_band`]), one short device access each.
//! Every write to a host copy gives it a new version, so a reader sees
//! when it changed between two bands.

use std::ops::Range;
use std::sync::Arc;

use gpuswap_protocol::format;
use vm_memory::GuestMemoryBackend;

use super::{Backing, GpuDevice, ResourceKind};
use crate::memory::{self, BackingError, GuestExtent};
use crate::renderer::{Rect2d, Renderer};

/// One resource at one moment, enough to read its backing without the
/// device.
pub struct ResourceSnapshot<M> {
    pub id: u32,
    pub kind: ResourceKind,
    /// Attaches so far (creation with entries included).
    pub generation: u64,
    /// The scanouts showing it.
    pub scanouts: Vec<u32>,
    /// Its UUID, once RESOURCE_ASSIGN_UUID gave it one.
    pub uuid: Option<[u8; 16]>,
    /// The version of its host copy, for [`GpuDevice::read_host_band`].
    pub host_version: u64,
    /// The backing's extents and length, when attached.
    backing: Option<(Vec<GuestExtent>, u64)>,
    memory: Option<Arc<M>>,
}

impl<M: GuestMemoryBackend> ResourceSnapshot<M> {
    /// Whether a backing is attached.
    pub fn is_attached(&self) -> bool {
        self.backing.is_some()
    }

    /// Entries of the attached backing (0 when detached).
    pub fn entries(&self) -> usize {
        self.backing
            .as_ref()
            .map_or(0, |(extents, _)| extents.len())
    }

    /// Bytes of the attached backing (0 when detached).
    pub fn backing_len(&self) -> u64 {
        self.backing.as_ref().map_or(0, |&(_, len)| len)
    }

    /// Hands the first `len` bytes of the attached backing (all of it if
    /// it is shorter) to `visit`, piece by piece, read from guest memory
    /// as it is now: the guest may be writing it, and the device is not
    /// needed. `None` when detached or without guest memory.
    pub fn read_backing(
        &self,
        len: u64,
        visit: impl FnMut(&[u8]),
    ) -> Option<Result<(), BackingError>> {
        let (extents, _) = self.backing.as_ref()?;
        let memory = self.memory.as_ref()?;
        Some(memory::visit_backing(&**memory, extents, len, visit))
    }
}

impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    /// Ids of the live resources, in order.
    pub fn resource_ids(&self) -> Vec<u32> {
        self.resources.keys().copied().collect()
    }

    /// Resource `id` as it is now.
    pub fn snapshot(&self, id: u32) -> Option<ResourceSnapshot<M>> {
        let res = self.resources.get(&id)?;
        let backing = match &res.backing {
            Backing::Attached { extents, len } => Some((extents.clone(), *len)),
            Backing::Detached => None,
        };
        Some(ResourceSnapshot {
            id,
            kind: res.kind,
            generation: res.generation,
            scanouts: (0..self.scanouts.len() as u32)
                .filter(|&s| self.scanouts[s as usize].is_some_and(|src| src.resource_id() == id))
                .collect(),
            uuid: res.uuid,
            host_version: res.host_version,
            backing,
            memory: self.mem.clone(),
        })
    }

    /// Copies `rows` of 2D resource `id`'s host copy into `dst` (rows
    /// packed), if its host copy is still the one a snapshot saw as
    /// `host_version`; false if it changed, went away or is not 2D.
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
}
