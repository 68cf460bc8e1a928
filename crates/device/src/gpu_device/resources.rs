//! The resource table and the backing state machine: creation, attach,
//! detach, transfer and unref, host memory accounting, resource UUIDs, and
//! the device faults that fire on attaches and transfers.

use std::collections::BTreeMap;

use gpuswap_protocol::{blob_mem, ctrl_type, format, wire, ErrorCode, Response};
use log::warn;
use vm_memory::GuestMemoryBackend;

use super::{fail, CmdResult, Failure, GpuDevice, ENTRY_OVERHEAD, RESOURCE_OVERHEAD};
use crate::limited_warn;
use crate::memory::{self, GuestExtent};
use crate::renderer::{Rect2d, Renderer};
use crate::trace::{DetachReason, EventKind, InjectedFault, Violation};

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    TwoD {
        format: u32,
        width: u32,
        height: u32,
    },
    GuestBlob {
        flags: u32,
        size: u64,
    },
}

impl ResourceKind {
    /// Bytes of content: the host copy for 2D, the blob size for blobs.
    pub fn content_len(&self) -> u64 {
        match *self {
            ResourceKind::TwoD { width, height, .. } => {
                u64::from(width) * u64::from(height) * u64::from(format::BYTES_PER_PIXEL)
            }
            ResourceKind::GuestBlob { size, .. } => size,
        }
    }
}

/// Whether a resource has guest pages behind it, and which.
#[derive(Debug)]
pub(super) enum Backing {
    Detached,
    /// The extents as the guest sent them (decoded once, moved here): the
    /// one place a backing is stored. The page-ownership index refers to
    /// them; the renderer gets host iovecs derived from them.
    Attached {
        extents: Vec<GuestExtent>,
        len: u64,
    },
}

/// Every attached backing in `resources`, for the page-ownership index.
pub(super) fn attached_backings(
    resources: &BTreeMap<u32, Resource>,
) -> impl Iterator<Item = (u32, &[GuestExtent])> {
    resources
        .iter()
        .filter_map(|(&id, res)| match &res.backing {
            Backing::Attached { extents, .. } => Some((id, extents.as_slice())),
            Backing::Detached => None,
        })
}

/// A live resource.
#[derive(Debug)]
pub(super) struct Resource {
    pub(super) kind: ResourceKind,
    pub(super) backing: Backing,
    /// Bumped by every successful attach (creation with entries included).
    pub(super) generation: u64,
    /// Host memory charged to this resource, excluding its backing entries.
    pub(super) charged: u64,
    pub(super) uuid: Option<[u8; 16]>,
    /// Changes whenever the host copy does (see [`GpuDevice::host_copy_written`]).
    pub(super) host_version: u64,
}

impl Resource {
    pub(super) fn is_attached(&self) -> bool {
        matches!(self.backing, Backing::Attached { .. })
    }
}

impl<R: Renderer, M: GuestMemoryBackend> GpuDevice<R, M> {
    fn charge(&mut self, bytes: u64, what: &str) -> Result<(), Failure> {
        match self.host_memory_used.checked_add(bytes) {
            Some(total) if total <= self.config.max_host_memory => {
                self.host_memory_used = total;
                Ok(())
            }
            _ => Err(fail(
                ErrorCode::OutOfMemory,
                format!(
                    "{what} needs {bytes} bytes; {} of {} in use",
                    self.host_memory_used, self.config.max_host_memory
                ),
            )),
        }
    }

    fn uncharge(&mut self, bytes: u64) {
        self.host_memory_used = self.host_memory_used.saturating_sub(bytes);
    }

    fn check_new_id(&mut self, id: u32, command: &'static str) -> Result<(), Failure> {
        if id == 0 {
            return Err(fail(
                ErrorCode::InvalidResourceId,
                "resource id 0 is reserved",
            ));
        }
        if self.resources.contains_key(&id) {
            self.violation(id, Violation::DuplicateResource, command);
            return Err(fail(
                ErrorCode::InvalidResourceId,
                format!("resource {id} already exists"),
            ));
        }
        Ok(())
    }

    pub(super) fn create_2d(&mut self, args: &wire::ResourceCreate2d) -> CmdResult {
        let name = ctrl_type::name(ctrl_type::RESOURCE_CREATE_2D);
        let id = args.resource_id;
        self.check_new_id(id, name)?;
        if !format::is_valid(args.format) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: unknown format {}", args.format),
            ));
        }
        if args.width == 0 || args.height == 0 {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: empty"),
            ));
        }
        // The renderer computes the stride in u32 and the size in usize.
        let size = args
            .width
            .checked_mul(format::BYTES_PER_PIXEL)
            .and_then(|stride| u64::from(stride).checked_mul(u64::from(args.height)))
            .ok_or_else(|| {
                fail(
                    ErrorCode::InvalidParameter,
                    format!("resource {id}: {}x{} overflows", args.width, args.height),
                )
            })?;
        let charged = size + RESOURCE_OVERHEAD;
        self.charge(charged, &format!("resource {id}"))?;
        if let Err(e) = self
            .renderer
            .create_2d(id, args.format, args.width, args.height)
        {
            self.uncharge(charged);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let kind = ResourceKind::TwoD {
            format: args.format,
            width: args.width,
            height: args.height,
        };
        self.insert(id, kind, charged);
        Ok(Response::OkNoData)
    }

    fn insert(&mut self, id: u32, kind: ResourceKind, charged: u64) {
        self.resources.insert(
            id,
            Resource {
                kind,
                backing: Backing::Detached,
                generation: 0,
                charged,
                uuid: None,
                host_version: 0,
            },
        );
        self.host_copy_written(id);
        self.counters.resources_created += 1;
        self.trace.record(
            id,
            0,
            EventKind::Create {
                kind,
                size: kind.content_len(),
            },
        );
    }

    /// Gives resource `id`'s host copy a version no other host copy has
    /// had, so that an inspection reading it in bands sees any change.
    fn host_copy_written(&mut self, id: u32) {
        self.host_versions += 1;
        if let Some(res) = self.resources.get_mut(&id) {
            res.host_version = self.host_versions;
        }
    }

    pub(super) fn create_blob(
        &mut self,
        args: &wire::ResourceCreateBlob,
        ctx_id: u32,
        entries: Vec<GuestExtent>,
        name: &'static str,
    ) -> CmdResult {
        let id = args.resource_id;
        self.check_new_id(id, name)?;
        if args.blob_mem != blob_mem::GUEST {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: blob_mem {} needs host memory this device does not have",
                    args.blob_mem
                ),
            ));
        }
        if ctx_id != 0 {
            return Err(fail(
                ErrorCode::InvalidContextId,
                format!("resource {id}: context {ctx_id} does not exist"),
            ));
        }
        if args.size == 0 {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: empty"),
            ));
        }
        self.charge(RESOURCE_OVERHEAD, &format!("resource {id}"))?;
        if let Err(e) = self
            .renderer
            .create_guest_blob(id, args.blob_flags, args.size)
        {
            self.uncharge(RESOURCE_OVERHEAD);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let kind = ResourceKind::GuestBlob {
            flags: args.blob_flags,
            size: args.size,
        };
        self.insert(id, kind, RESOURCE_OVERHEAD);
        // The spec allows nr_entries == 0 with ATTACH_BACKING later, for
        // drivers that swap blob pages out and in.
        if !entries.is_empty() {
            if let Err(f) = self.attach(id, entries, name) {
                self.destroy(id, DetachReason::Unref);
                return Err(f);
            }
        }
        Ok(Response::OkNoData)
    }

    pub(super) fn attach(
        &mut self,
        id: u32,
        extents: Vec<GuestExtent>,
        name: &'static str,
    ) -> CmdResult {
        let res = self.live(id, name)?;
        if res.is_attached() {
            self.violation(id, Violation::DoubleAttach, name);
            return Err(fail(
                ErrorCode::Unspec,
                format!("resource {id} already has a backing"),
            ));
        }
        let kind = res.kind;
        if extents.is_empty() {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: attach with no entries"),
            ));
        }
        if self.faults.fail_attaches > 0 {
            self.faults.fail_attaches -= 1;
            self.counters.faults_injected += 1;
            let generation = self.resources.get(&id).map_or(0, |r| r.generation);
            self.trace.record(
                id,
                generation,
                EventKind::Fault {
                    fault: InjectedFault::FailAttach,
                },
            );
            return Err(fail(ErrorCode::OutOfMemory, "injected attach failure"));
        }
        let bad = |e: memory::BackingError| {
            fail(ErrorCode::InvalidParameter, format!("resource {id}: {e}"))
        };
        // Resolving checks every entry too: when it succeeds, none is empty
        // or wraps, and the iovecs add up to the backing's length. When it
        // fails, `validate` finds an entry that is empty or wraps first, as
        // those are refused before the length checks below, and these
        // before an entry outside guest RAM.
        let resolved = (self.mem.as_deref())
            .map(|mem| (memory::ram_bytes(mem), memory::resolve(mem, &extents)));
        let len = match &resolved {
            Some((_, Ok(iovecs))) => iovecs.iter().map(|v| v.len as u64).sum(),
            _ => memory::validate(&extents).map_err(bad)?,
        };
        if let ResourceKind::GuestBlob { size, .. } = kind {
            if len < size {
                return Err(fail(
                    ErrorCode::InvalidParameter,
                    format!("resource {id}: backing of {len} bytes for a {size}-byte blob"),
                ));
            }
        }
        let Some((ram, resolved)) = resolved else {
            return Err(fail(ErrorCode::Unspec, "no guest memory table yet"));
        };
        // A real backing's pages are distinct, so it fits in guest RAM. One
        // longer (an extent repeated over and over) would have the page
        // index walk the same pages again and again, noting each as taken:
        // work and memory without bound.
        if len > ram {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: backing of {len} bytes, guest RAM is {ram}"),
            ));
        }
        let iovecs = resolved.map_err(bad)?;
        let entry_bytes = extents.len() as u64 * ENTRY_OVERHEAD;
        self.charge(entry_bytes, &format!("backing of resource {id}"))?;
        // SAFETY: the iovecs point into `self.mem`, which stays mapped until
        // `set_memory` re-attaches every backing into a new table, and the
        // renderer drops them on detach or unref.
        if let Err(e) = unsafe { self.renderer.attach_backing(id, iovecs) } {
            self.uncharge(entry_bytes);
            return Err(fail(ErrorCode::Unspec, e.to_string()));
        }
        let conflicts = self
            .owners
            .claim(id, &extents, attached_backings(&self.resources));
        let entries = extents.len() as u32;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or_else(|| fail(ErrorCode::InvalidResourceId, "resource vanished"))?;
        res.generation += 1;
        res.backing = Backing::Attached { extents, len };
        let generation = res.generation;
        self.counters.attaches += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Attach {
                entries,
                bytes: len,
            },
        );
        // Overlap is a guest bug (pages freed while still attached), not a
        // reason to refuse: record it for the harness and go on.
        for other in conflicts {
            limited_warn!(
                self.log_limit,
                "overlapping backing",
                "resource {id}: backing overlaps live resource {other}"
            );
            self.violation(id, Violation::OverlappingBacking { other }, name);
        }
        Ok(Response::OkNoData)
    }

    /// Forgets a resource's backing (renderer already told); returns
    /// whether it had one.
    pub(super) fn drop_backing(&mut self, id: u32) -> bool {
        let Some(res) = self.resources.get_mut(&id) else {
            return false;
        };
        let Backing::Attached { extents, .. } =
            std::mem::replace(&mut res.backing, Backing::Detached)
        else {
            return false;
        };
        self.owners.release(id, &extents);
        self.uncharge(extents.len() as u64 * ENTRY_OVERHEAD);
        true
    }

    pub(super) fn detach(&mut self, id: u32, name: &'static str) -> CmdResult {
        let res = self.live(id, name)?;
        if !res.is_attached() {
            self.violation(id, Violation::DoubleDetach, name);
            return Err(fail(
                ErrorCode::Unspec,
                format!("resource {id} has no backing to detach"),
            ));
        }
        let generation = res.generation;
        self.renderer.detach_backing(id);
        self.drop_backing(id);
        self.counters.detaches += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Detach {
                reason: DetachReason::Command,
            },
        );
        Ok(Response::OkNoData)
    }

    pub(super) fn unref(&mut self, id: u32, name: &'static str) -> CmdResult {
        self.live(id, name)?;
        self.destroy(id, DetachReason::Unref);
        Ok(Response::OkNoData)
    }

    /// Removes a live resource: implicit detach, scanouts and cursor off,
    /// renderer and memory accounting released.
    pub(super) fn destroy(&mut self, id: u32, reason: DetachReason) {
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        if self.drop_backing(id) {
            self.counters.implicit_detaches += 1;
            self.trace
                .record(id, generation, EventKind::Detach { reason });
        }
        for scanout in 0..self.scanouts.len() {
            if self.scanouts[scanout].is_some_and(|s| s.resource_id() == id) {
                self.scanouts[scanout] = None;
                if let Some(d) = self.display.as_mut() {
                    d.scanout(scanout as u32, 0, 0);
                }
                self.trace.record(
                    id,
                    generation,
                    EventKind::Scanout {
                        scanout_id: scanout as u32,
                        enabled: false,
                    },
                );
            }
        }
        if let Err(e) = self.renderer.unref(id) {
            warn!("resource {id}: {e}");
        }
        if let Some(res) = self.resources.remove(&id) {
            self.uncharge(res.charged);
        }
        self.counters.resources_unreferenced += 1;
        self.trace.record(id, generation, EventKind::Unref);
    }

    pub(super) fn check_rect(
        id: u32,
        rect: Rect2d,
        width: u32,
        height: u32,
    ) -> Result<(), Failure> {
        let inside =
            |pos: u32, len: u32, limit: u32| pos.checked_add(len).is_some_and(|end| end <= limit);
        if inside(rect.x, rect.width, width) && inside(rect.y, rect.height, height) {
            Ok(())
        } else {
            Err(fail(
                ErrorCode::InvalidParameter,
                format!("resource {id}: rect {rect:?} outside {width}x{height}"),
            ))
        }
    }

    pub(super) fn transfer_to_host(
        &mut self,
        args: &wire::TransferToHost2d,
        name: &'static str,
    ) -> CmdResult {
        let id = args.resource_id;
        let kind = self.attached(id, name)?;
        let rect: Rect2d = args.r.into();
        let generation = self.resources.get(&id).map_or(0, |r| r.generation);
        let ResourceKind::TwoD { width, height, .. } = kind else {
            // A guest blob's content is its backing: nothing to copy.
            self.trace.record(
                id,
                generation,
                EventKind::Transfer {
                    rect,
                    offset: args.offset,
                },
            );
            return Ok(Response::OkNoData);
        };
        Self::check_rect(id, rect, width, height)?;
        if rect.width == 0 || rect.height == 0 {
            return Ok(Response::OkNoData);
        }
        // The source rows start at `offset` and are `width * 4` apart (the
        // layout QEMU and the Linux driver use); they must be in the backing.
        let stride = u64::from(width) * u64::from(format::BYTES_PER_PIXEL);
        let row = u64::from(rect.width) * u64::from(format::BYTES_PER_PIXEL);
        let backing_len = match self.resources.get(&id).map(|r| &r.backing) {
            Some(Backing::Attached { len, .. }) => *len,
            _ => 0,
        };
        let end = (u64::from(rect.height) - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(args.offset));
        if end.is_none_or(|end| end > backing_len) {
            return Err(fail(
                ErrorCode::InvalidParameter,
                format!(
                    "resource {id}: transfer of {rect:?} at offset {} reads past the {backing_len}-byte backing",
                    args.offset
                ),
            ));
        }
        self.renderer
            .transfer_to_host_2d(id, rect, args.offset, stride as u32)
            .map_err(|e| fail(ErrorCode::InvalidParameter, e.to_string()))?;
        self.host_copy_written(id);
        self.counters.transfers += 1;
        self.counters.bytes_transferred += row * u64::from(rect.height);
        self.trace.record(
            id,
            generation,
            EventKind::Transfer {
                rect,
                offset: args.offset,
            },
        );
        if self.faults.corrupt_transfers > 0 {
            self.corrupt_host_copy(id, generation, rect, stride);
        }
        Ok(Response::OkNoData)
    }

    /// The `corrupt_transfers` fault, after a transfer of `rect` into the
    /// host copy of 2D resource `id` (rows `stride` bytes apart): XORs the
    /// rect's first byte with 0xff. The transfer itself has succeeded
    /// either way; if the renderer cannot do it, the fault stays armed.
    fn corrupt_host_copy(&mut self, id: u32, generation: u64, rect: Rect2d, stride: u64) {
        let pixel = Rect2d {
            width: 1,
            height: 1,
            ..rect
        };
        let bpp = format::BYTES_PER_PIXEL;
        let mut bytes = [0u8; format::BYTES_PER_PIXEL as usize];
        let flipped = self
            .renderer
            .read_host_copy(id, pixel, &mut bytes, bpp)
            .and_then(|()| {
                bytes[0] ^= 0xff;
                self.renderer.write_host_copy(id, pixel, &bytes, bpp)
            });
        if let Err(e) = flipped {
            warn!("resource {id}: injected transfer corruption failed: {e}");
            return;
        }
        self.host_copy_written(id);
        let host_offset = u64::from(rect.y) * stride + u64::from(rect.x) * u64::from(bpp);
        warn!("resource {id}: injected fault: host copy byte {host_offset} flipped after transfer");
        self.faults.corrupt_transfers -= 1;
        self.counters.faults_injected += 1;
        self.trace.record(
            id,
            generation,
            EventKind::Fault {
                fault: InjectedFault::CorruptTransfer { host_offset },
            },
        );
    }

    pub(super) fn assign_uuid(&mut self, id: u32, name: &'static str) -> CmdResult {
        let seed = self.uuid_seed;
        let res = self.live(id, name)?;
        let uuid = *res.uuid.get_or_insert_with(|| {
            let mut bytes =
                xxhash_rust::xxh3::xxh3_128_with_seed(&id.to_le_bytes(), seed).to_le_bytes();
            // RFC 4122 version 4, variant 1.
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            bytes
        });
        Ok(Response::OkResourceUuid(uuid))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::{DeviceConfig, RutabagaRenderer};

    /// Attach resolves a backing before its length checks, yet reports the
    /// first of several problems in this order: no memory table (unless an
    /// entry is empty or wraps), an entry that is empty or wraps, a backing
    /// too short for its blob or longer than guest RAM, an entry outside
    /// guest RAM.
    #[test]
    fn attach_reports_the_first_problem() {
        let mut dev = GpuDevice::new(DeviceConfig::default(), RutabagaRenderer::new().unwrap());
        let two_d = wire::ResourceCreate2d {
            resource_id: 1,
            format: format::B8G8R8X8_UNORM,
            width: 16,
            height: 16,
        };
        assert!(dev.create_2d(&two_d).is_ok());
        let blob = wire::ResourceCreateBlob {
            resource_id: 2,
            blob_mem: blob_mem::GUEST,
            size: 0x2000,
            ..Default::default()
        };
        assert!(dev.create_blob(&blob, 0, Vec::new(), "blob").is_ok());
        let attach = |dev: &mut GpuDevice<_, _>, id, entries: &[(u64, u32)]| {
            let extents = entries
                .iter()
                .map(|&(addr, len)| GuestExtent { addr, len })
                .collect();
            match dev.attach(id, extents, "attach") {
                Ok(_) => panic!("{entries:x?} attached"),
                Err(f) => (f.code, f.why),
            }
        };
        let outside = (0x20000, 0x1000);
        let empty = (0x1000, 0);
        let (code, why) = attach(&mut dev, 1, &[(0x1000, 0x1000)]);
        assert_eq!(code, ErrorCode::Unspec, "{why}");
        let (code, why) = attach(&mut dev, 1, &[(0x1000, 0x1000), empty]);
        assert_eq!(code, ErrorCode::InvalidParameter);
        assert!(why.contains("entry 1 has length 0"), "{why}");

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        dev.set_memory(Arc::new(mem));
        let cases = [
            (2, vec![outside, empty], "entry 1 has length 0"),
            (
                1,
                vec![outside, (u64::MAX - 0xfff, 0x2000)],
                "entry 1 (0xfffffffffffff000 + 0x2000) wraps",
            ),
            (2, vec![outside], "4096 bytes for a 8192-byte blob"),
            (
                1,
                [vec![outside], vec![(0x1000, 0x1000); 16]].concat(),
                "guest RAM is 65536",
            ),
            (2, vec![(0x1000, 0x2000), outside], "entry 1 (0x20000"),
        ];
        for (id, entries, want) in cases {
            let (code, why) = attach(&mut dev, id, &entries);
            assert_eq!(code, ErrorCode::InvalidParameter, "{why}");
            assert!(why.contains(want), "{entries:x?}: {why}, not {want}");
        }
    }
}
