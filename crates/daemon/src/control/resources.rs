//! The `resources` request: each live resource as the control socket shows
//! it, with xxh3-64 hashes of its host copy and of its backing.
//!
//! Hashing reads megabytes, so it must not hold up the queues: the device
//! lock is held only to take each resource's snapshot and to read each
//! band of its host copy (at most [`HOST_BAND`] bytes, one short lock
//! each, into one reused buffer), never across a whole hash; the backing
//! is hashed from the snapshot without the device. A host copy that
//! changes between two bands has no single hash: it is reported as
//! changed (`host_changed`) instead of a hash of two different states.

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;

use gpuswap_api::control as api;
use gpuswap_device::{ResourceKind, ResourceSnapshot};
use gpuswap_protocol::format;
use xxhash_rust::xxh3::Xxh3;

use super::records::kind;
use crate::backend::{ControlHandle, GuestMemory};

/// The most host-copy bytes read in one device access.
pub const HOST_BAND: usize = 256 << 10;

/// Hands each live resource (or just `id`) to `emit`, in id order, with
/// hashes unless `hashes` is false.
pub(super) fn resources_of(
    backend: &ControlHandle,
    id: Option<u32>,
    hashes: bool,
    mut emit: impl FnMut(api::Resource) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let ids = match id {
        Some(id) => vec![id],
        None => backend.device().resource_ids(),
    };
    let mut band = Vec::new();
    for id in ids {
        let snapshot = backend.device().snapshot(id);
        let Some(snapshot) = snapshot else {
            // Gone since the ids were listed.
            continue;
        };
        let mut resource = resource(&snapshot);
        if hashes {
            let size = resource.size;
            resource.backing_hash = backing_hash(&snapshot, size).map(gpuswap_api::hex);
            match host_hash(backend, &snapshot, &mut band) {
                Some(Ok(hash)) => resource.host_hash = Some(gpuswap_api::hex(hash)),
                Some(Err(Changed)) => resource.host_changed = true,
                None => {}
            }
        }
        emit(resource)?;
    }
    Ok(())
}

/// The `resources` reply, written one resource at a time.
pub(super) fn write_resources(
    out: &mut UnixStream,
    backend: &ControlHandle,
    id: Option<u32>,
    hashes: bool,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(out);
    out.write_all(br#"{"ok":true,"resources":["#)?;
    let mut first = true;
    resources_of(backend, id, hashes, |resource| {
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, &resource).map_err(std::io::Error::from)
    })?;
    out.write_all(b"]}\n")?;
    out.flush()
}

/// A snapshot as the protocol shows it, without hashes.
fn resource(s: &ResourceSnapshot<GuestMemory>) -> api::Resource {
    let (format, width, height) = match s.kind {
        ResourceKind::TwoD {
            format,
            width,
            height,
        } => (Some(format), Some(width), Some(height)),
        ResourceKind::GuestBlob { .. } => (None, None, None),
    };
    api::Resource {
        id: s.id,
        kind: kind(s.kind),
        format,
        width,
        height,
        size: s.kind.content_len(),
        backing: if s.is_attached() {
            api::Backing::Attached
        } else {
            api::Backing::Detached
        },
        generation: s.generation,
        entries: s.entries() as u64,
        backing_bytes: s.backing_len(),
        host_hash: None,
        backing_hash: None,
        host_changed: false,
        scanouts: s.scanouts.clone(),
        uuid: s
            .uuid
            .map(|u| u.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// xxh3-64 of the backing's first `size` bytes, as guest memory holds them
/// now; `None` when detached or no longer guest RAM.
fn backing_hash(s: &ResourceSnapshot<GuestMemory>, size: u64) -> Option<u64> {
    let mut hasher = Xxh3::new();
    s.read_backing(size, |bytes| hasher.update(bytes))?.ok()?;
    Some(hasher.digest())
}

/// The host copy changed (or went) while it was being read.
struct Changed;

/// xxh3-64 of a 2D resource's host copy, read band by band (`band` is the
/// reused buffer); `None` for a resource without a host copy.
fn host_hash(
    backend: &ControlHandle,
    s: &ResourceSnapshot<GuestMemory>,
    band: &mut Vec<u8>,
) -> Option<Result<u64, Changed>> {
    let ResourceKind::TwoD { width, height, .. } = s.kind else {
        return None;
    };
    let stride = width as usize * format::BYTES_PER_PIXEL as usize;
    let rows_per_band = (HOST_BAND / stride).max(1) as u32;
    band.resize(stride * rows_per_band.min(height) as usize, 0);
    let mut hasher = Xxh3::new();
    let mut row = 0;
    while row < height {
        let rows = row..height.min(row + rows_per_band);
        let bytes = &mut band[..stride * rows.len()];
        let read = backend
            .device()
            .read_host_band(s.id, s.host_version, rows.clone(), bytes);
        if !read {
            return Some(Err(Changed));
        }
        hasher.update(bytes);
        row = rows.end;
    }
    Some(Ok(hasher.digest()))
}
