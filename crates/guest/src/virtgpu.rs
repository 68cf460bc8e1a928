//! virtio-gpu driver ioctls (include/uapi/drm/virtgpu_drm.h), with the 6.12
//! semantics of drivers/gpu/drm/virtio/virtgpu_ioctl.c noted where they matter.

use gpuswap_api::agent::DeviceParams;

use crate::drm::Card;
use crate::error::{Error, Result};
use crate::uapi;

/// The answers of DRM_IOCTL_VIRTGPU_GETPARAM for `card`, each `None` when
/// the query failed (an older kernel answers EINVAL for parameters it does
/// not know).
pub fn query_params(card: &Card) -> DeviceParams {
    let flag = |p| getparam(card, p).ok().map(|v| v != 0);
    DeviceParams {
        three_d_features: flag(uapi::VIRTGPU_PARAM_3D_FEATURES),
        capset_query_fix: flag(uapi::VIRTGPU_PARAM_CAPSET_QUERY_FIX),
        resource_blob: flag(uapi::VIRTGPU_PARAM_RESOURCE_BLOB),
        host_visible: flag(uapi::VIRTGPU_PARAM_HOST_VISIBLE),
        cross_device: flag(uapi::VIRTGPU_PARAM_CROSS_DEVICE),
        context_init: flag(uapi::VIRTGPU_PARAM_CONTEXT_INIT),
        supported_capset_ids: getparam(card, uapi::VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)
            .ok()
            .map(|v| u64::from(v as u32)),
    }
}

/// Names of the boolean parameters that are set, e.g. `["capset_query_fix"]`.
pub fn set_param_names(params: &DeviceParams) -> Vec<&'static str> {
    [
        ("3d_features", params.three_d_features),
        ("capset_query_fix", params.capset_query_fix),
        ("resource_blob", params.resource_blob),
        ("host_visible", params.host_visible),
        ("cross_device", params.cross_device),
        ("context_init", params.context_init),
    ]
    .into_iter()
    .filter(|(_, v)| *v == Some(true))
    .map(|(n, _)| n)
    .collect()
}

/// DRM_IOCTL_VIRTGPU_GETPARAM. The kernel writes an `int` through the user
/// pointer passed in `value`.
pub fn getparam(card: &Card, param: u64) -> Result<i32> {
    let mut value: i32 = 0;
    let mut arg = uapi::drm_virtgpu_getparam {
        param,
        value: &mut value as *mut i32 as u64,
    };
    // SAFETY: `value` is a live, writable i32 for the whole call; the kernel
    // writes exactly sizeof(int) bytes to it.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_GETPARAM",
            uapi::virtgpu_ioctl_getparam,
            &mut arg,
        )?
    };
    Ok(value)
}

/// A freshly created buffer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// GEM handle (per DRM file).
    pub handle: u32,
    /// virtio-gpu resource id (what the host sees).
    pub res_id: u32,
}

/// DRM_IOCTL_VIRTGPU_RESOURCE_CREATE on the 2D path. Without virgl the kernel
/// requires target == PIPE_TEXTURE_2D, depth/array_size/nr_samples <= 1 and
/// last_level <= 1, then sends RESOURCE_CREATE_2D with `format` (a
/// VIRTIO_GPU_FORMAT_* value) plus ATTACH_BACKING of a shmem BO of `size`
/// bytes, rounded up to PAGE_SIZE (0 would mean one page).
pub fn resource_create_2d(
    card: &Card,
    width: u32,
    height: u32,
    format: u32,
    size: u32,
) -> Result<Created> {
    let mut arg = uapi::drm_virtgpu_resource_create {
        target: uapi::PIPE_TEXTURE_2D,
        format,
        bind: uapi::VIRGL_BIND_RENDER_TARGET_SAMPLER,
        width,
        height,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
        size,
        stride: 0,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_RESOURCE_CREATE",
            uapi::virtgpu_ioctl_resource_create,
            &mut arg,
        )?
    };
    Ok(Created {
        handle: arg.bo_handle,
        res_id: arg.res_handle,
    })
}

/// DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB for a guest-memory blob
/// (`VIRTGPU_BLOB_MEM_GUEST`, no command stream, blob_id 0).
pub fn resource_create_blob_guest(card: &Card, size: u64, blob_flags: u32) -> Result<Created> {
    let mut arg = uapi::drm_virtgpu_resource_create_blob {
        blob_mem: uapi::VIRTGPU_BLOB_MEM_GUEST,
        blob_flags,
        size,
        ..Default::default()
    };
    // SAFETY: cmd_size is 0, so the kernel does not read the `cmd` pointer.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB",
            uapi::virtgpu_ioctl_resource_create_blob,
            &mut arg,
        )?
    };
    Ok(Created {
        handle: arg.bo_handle,
        res_id: arg.res_handle,
    })
}

/// DRM_IOCTL_VIRTGPU_MAP: the fake offset to mmap the BO at.
pub fn map_offset(card: &Card, handle: u32) -> Result<u64> {
    let mut arg = uapi::drm_virtgpu_map {
        handle,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe { card.ioctl("DRM_IOCTL_VIRTGPU_MAP", uapi::virtgpu_ioctl_map, &mut arg)? };
    Ok(arg.offset)
}

/// What DRM_IOCTL_VIRTGPU_RESOURCE_INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub res_id: u32,
    /// GEM object size in bytes (page aligned).
    pub size: u32,
    /// VIRTGPU_BLOB_MEM_* for blobs, 0 otherwise.
    pub blob_mem: u32,
}

/// DRM_IOCTL_VIRTGPU_RESOURCE_INFO.
pub fn resource_info(card: &Card, handle: u32) -> Result<ResourceInfo> {
    let mut arg = uapi::drm_virtgpu_resource_info {
        bo_handle: handle,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_RESOURCE_INFO",
            uapi::virtgpu_ioctl_resource_info,
            &mut arg,
        )?
    };
    Ok(ResourceInfo {
        res_id: arg.res_handle,
        size: arg.size,
        blob_mem: arg.blob_mem,
    })
}

/// A 2D rectangle of a resource plus the byte offset into the backing where it
/// starts (the virtio TRANSFER_*_2D `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub offset: u32,
}

impl Region {
    fn to_uapi(self, handle: u32) -> uapi::drm_virtgpu_3d_transfer {
        uapi::drm_virtgpu_3d_transfer {
            bo_handle: handle,
            box_: uapi::drm_virtgpu_3d_box {
                x: self.x,
                y: self.y,
                z: 0,
                w: self.w,
                h: self.h,
                d: 1,
            },
            level: 0,
            offset: self.offset,
            // Must be 0 for non-host3d resources on the virgl path (EINVAL
            // otherwise) and is ignored on the 2D path (the host derives it).
            stride: 0,
            layer_stride: 0,
        }
    }
}

/// DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST. Without virgl the kernel queues
/// TRANSFER_TO_HOST_2D *unfenced* (so a later WAIT does not cover it); it
/// refuses guest blobs with EINVAL.
pub fn transfer_to_host(card: &Card, handle: u32, region: Region) -> Result<()> {
    let mut arg = region.to_uapi(handle);
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST",
            uapi::virtgpu_ioctl_transfer_to_host,
            &mut arg,
        )
    }
}

/// DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST. The 6.12 kernel answers ENOSYS
/// without virgl 3D.
pub fn transfer_from_host(card: &Card, handle: u32, region: Region) -> Result<()> {
    let mut arg = region.to_uapi(handle);
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST",
            uapi::virtgpu_ioctl_transfer_from_host,
            &mut arg,
        )
    }
}

/// DRM_IOCTL_VIRTGPU_WAIT: wait (up to 15 s in the kernel) for the fences on
/// the BO's reservation object; with `nowait`, EBUSY if any is unsignalled.
pub fn wait(card: &Card, handle: u32, nowait: bool) -> Result<()> {
    let mut arg = uapi::drm_virtgpu_3d_wait {
        handle,
        flags: if nowait { uapi::VIRTGPU_WAIT_NOWAIT } else { 0 },
    };
    // SAFETY: no embedded user pointers.
    unsafe { card.ioctl("DRM_IOCTL_VIRTGPU_WAIT", uapi::virtgpu_ioctl_wait, &mut arg) }
}

/// DRM_IOCTL_VIRTGPU_MADVISE (gpuswap private UAPI): `madv` is
/// VIRTGPU_MADV_WILLNEED or VIRTGPU_MADV_DONTNEED. Returns `retained`: false
/// once the kernel has purged the BO.
pub fn madvise(card: &Card, handle: u32, madv: u32) -> Result<bool> {
    let mut arg = uapi::drm_virtgpu_madvise {
        bo_handle: handle,
        madv,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_VIRTGPU_MADVISE",
            uapi::virtgpu_ioctl_madvise,
            &mut arg,
        )?
    };
    Ok(arg.retained != 0)
}

/// Bytes per pixel of a VIRTIO_GPU_FORMAT_* value (all 2D formats are 4 bytes).
pub fn format_bpp(format: u32) -> Option<u32> {
    match format {
        uapi::VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM
        | uapi::VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => Some(4),
        _ => None,
    }
}

/// Stride and content size (stride * height) of a 2D resource, checked to fit
/// the u32 `size` field of drm_virtgpu_resource_create.
pub fn layout_2d(width: u32, height: u32, format: u32) -> Result<(u32, u32)> {
    if width == 0 || height == 0 {
        return Err(Error::msg("width and height must be non-zero"));
    }
    let bpp = format_bpp(format)
        .ok_or_else(|| Error::msg(format!("unsupported VIRTIO_GPU_FORMAT {format}")))?;
    let stride = width
        .checked_mul(bpp)
        .ok_or_else(|| Error::msg("width * bpp overflows u32"))?;
    let size = stride
        .checked_mul(height)
        .filter(|s| *s <= u32::MAX - 4095)
        .ok_or_else(|| Error::msg("stride * height does not fit the 32-bit size field"))?;
    Ok((stride, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_checks() {
        assert_eq!(layout_2d(64, 32, 2).unwrap(), (256, 8192));
        assert!(layout_2d(0, 1, 2).is_err());
        assert!(layout_2d(1, 1, 99).is_err());
        assert!(layout_2d(u32::MAX, 2, 2).is_err());
        assert!(layout_2d(65536, 65536, 2).is_err());
    }

    #[test]
    fn param_names() {
        let p = DeviceParams {
            capset_query_fix: Some(true),
            resource_blob: Some(false),
            ..Default::default()
        };
        assert_eq!(set_param_names(&p), vec!["capset_query_fix"]);
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["3d_features"], serde_json::Value::Null);
        assert_eq!(v["capset_query_fix"], true);
    }
}
