//! Linux 6.12 DRM / virtio-gpu UAPI: constants, wire structs and ioctl wrappers.
//!
//! Mirrors (field for field, same names):
//! - `include/uapi/drm/drm.h`          (core ioctls, `struct drm_version`, `struct drm_gem_close`)
//! - `include/uapi/drm/drm_mode.h`     (KMS: dumb buffers, resources, connectors, CRTCs, FBs)
//! - `include/uapi/drm/drm_fourcc.h`   (`DRM_FORMAT_XRGB8888`)
//! - `include/uapi/drm/virtgpu_drm.h`  (virtio-gpu driver ioctls)
//! - `include/uapi/linux/virtio_gpu.h` (`enum virtio_gpu_formats`)
//!
//! Every struct is `#[repr(C)]` and its size is checked at compile time against the
//! size the kernel header gives on x86_64. The ioctl request numbers are derived by
//! nix's `ioctl_*!` macros from the direction, `DRM_IOCTL_BASE` ('d'), the number and
//! `size_of` the argument type, exactly like the `DRM_IOWR`/`DRM_IOW` C macros.
//! The generated functions are `unsafe`: the caller must pass a pointer to a valid,
//! properly initialised argument struct (and valid user pointers inside it).

use std::mem::size_of;

/// `DRM_IOCTL_BASE` (drm.h).
pub const DRM_IOCTL_BASE: u8 = b'd';
/// `DRM_COMMAND_BASE` (drm.h): first driver-private ioctl number.
pub const DRM_COMMAND_BASE: u8 = 0x40;

// ---------------------------------------------------------------------------
// drm.h
// ---------------------------------------------------------------------------

/// `struct drm_version` (drm.h). `__kernel_size_t` is 64-bit on x86_64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_version {
    pub version_major: i32,
    pub version_minor: i32,
    pub version_patchlevel: i32,
    pub name_len: u64,
    pub name: u64,
    pub date_len: u64,
    pub date: u64,
    pub desc_len: u64,
    pub desc: u64,
}
const _: () = assert!(size_of::<drm_version>() == 64);

/// `struct drm_gem_close` (drm.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_gem_close {
    pub handle: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<drm_gem_close>() == 8);

// DRM_IOCTL_VERSION = DRM_IOWR(0x00, struct drm_version)
nix::ioctl_readwrite!(drm_ioctl_version, DRM_IOCTL_BASE, 0x00, drm_version);
// DRM_IOCTL_GEM_CLOSE = DRM_IOW(0x09, struct drm_gem_close)
nix::ioctl_write_ptr!(drm_ioctl_gem_close, DRM_IOCTL_BASE, 0x09, drm_gem_close);

// ---------------------------------------------------------------------------
// drm_mode.h / drm_fourcc.h
// ---------------------------------------------------------------------------

/// `DRM_DISPLAY_MODE_LEN` (drm_mode.h).
pub const DRM_DISPLAY_MODE_LEN: usize = 32;
/// `DRM_MODE_TYPE_PREFERRED` (drm_mode.h).
pub const DRM_MODE_TYPE_PREFERRED: u32 = 1 << 3;
/// `drm_mode_get_connector.connection` values (`enum drm_connector_status` /
/// libdrm's `DRM_MODE_CONNECTED`).
pub const DRM_MODE_CONNECTED: u32 = 1;

/// `fourcc_code(a, b, c, d)` (drm_fourcc.h).
pub const fn fourcc_code(a: u8, b: u8, c: u8, d: u8) -> u32 {
    (a as u32) | ((b as u32) << 8) | ((c as u32) << 16) | ((d as u32) << 24)
}
/// `DRM_FORMAT_XRGB8888` (drm_fourcc.h): `[31:0] x:R:G:B 8:8:8:8 little endian`.
pub const DRM_FORMAT_XRGB8888: u32 = fourcc_code(b'X', b'R', b'2', b'4');

/// `struct drm_mode_modeinfo` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_modeinfo {
    pub clock: u32,
    pub hdisplay: u16,
    pub hsync_start: u16,
    pub hsync_end: u16,
    pub htotal: u16,
    pub hskew: u16,
    pub vdisplay: u16,
    pub vsync_start: u16,
    pub vsync_end: u16,
    pub vtotal: u16,
    pub vscan: u16,
    pub vrefresh: u32,
    pub flags: u32,
    pub type_: u32,
    pub name: [u8; DRM_DISPLAY_MODE_LEN],
}
const _: () = assert!(size_of::<drm_mode_modeinfo>() == 68);

/// `struct drm_mode_card_res` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_card_res {
    pub fb_id_ptr: u64,
    pub crtc_id_ptr: u64,
    pub connector_id_ptr: u64,
    pub encoder_id_ptr: u64,
    pub count_fbs: u32,
    pub count_crtcs: u32,
    pub count_connectors: u32,
    pub count_encoders: u32,
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
}
const _: () = assert!(size_of::<drm_mode_card_res>() == 64);

/// `struct drm_mode_crtc` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_crtc {
    pub set_connectors_ptr: u64,
    pub count_connectors: u32,
    pub crtc_id: u32,
    pub fb_id: u32,
    pub x: u32,
    pub y: u32,
    pub gamma_size: u32,
    pub mode_valid: u32,
    pub mode: drm_mode_modeinfo,
}
const _: () = assert!(size_of::<drm_mode_crtc>() == 104);

/// `struct drm_mode_get_encoder` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_get_encoder {
    pub encoder_id: u32,
    pub encoder_type: u32,
    pub crtc_id: u32,
    pub possible_crtcs: u32,
    pub possible_clones: u32,
}
const _: () = assert!(size_of::<drm_mode_get_encoder>() == 20);

/// `struct drm_mode_get_connector` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_get_connector {
    pub encoders_ptr: u64,
    pub modes_ptr: u64,
    pub props_ptr: u64,
    pub prop_values_ptr: u64,
    pub count_modes: u32,
    pub count_props: u32,
    pub count_encoders: u32,
    pub encoder_id: u32,
    pub connector_id: u32,
    pub connector_type: u32,
    pub connector_type_id: u32,
    pub connection: u32,
    pub mm_width: u32,
    pub mm_height: u32,
    pub subpixel: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<drm_mode_get_connector>() == 80);

/// `struct drm_mode_fb_cmd2` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_fb_cmd2 {
    pub fb_id: u32,
    pub width: u32,
    pub height: u32,
    pub pixel_format: u32,
    pub flags: u32,
    pub handles: [u32; 4],
    pub pitches: [u32; 4],
    pub offsets: [u32; 4],
    pub modifier: [u64; 4],
}
const _: () = assert!(size_of::<drm_mode_fb_cmd2>() == 104);

/// `struct drm_mode_create_dumb` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_create_dumb {
    pub height: u32,
    pub width: u32,
    pub bpp: u32,
    pub flags: u32,
    pub handle: u32,
    pub pitch: u32,
    pub size: u64,
}
const _: () = assert!(size_of::<drm_mode_create_dumb>() == 32);

/// `struct drm_mode_map_dumb` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_map_dumb {
    pub handle: u32,
    pub pad: u32,
    pub offset: u64,
}
const _: () = assert!(size_of::<drm_mode_map_dumb>() == 16);

/// `struct drm_mode_destroy_dumb` (drm_mode.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_mode_destroy_dumb {
    pub handle: u32,
}
const _: () = assert!(size_of::<drm_mode_destroy_dumb>() == 4);

// DRM_IOCTL_MODE_GETRESOURCES = DRM_IOWR(0xA0, struct drm_mode_card_res)
nix::ioctl_readwrite!(
    drm_ioctl_mode_getresources,
    DRM_IOCTL_BASE,
    0xA0,
    drm_mode_card_res
);
// DRM_IOCTL_MODE_GETCRTC = DRM_IOWR(0xA1, struct drm_mode_crtc)
nix::ioctl_readwrite!(drm_ioctl_mode_getcrtc, DRM_IOCTL_BASE, 0xA1, drm_mode_crtc);
// DRM_IOCTL_MODE_SETCRTC = DRM_IOWR(0xA2, struct drm_mode_crtc)
nix::ioctl_readwrite!(drm_ioctl_mode_setcrtc, DRM_IOCTL_BASE, 0xA2, drm_mode_crtc);
// DRM_IOCTL_MODE_GETENCODER = DRM_IOWR(0xA6, struct drm_mode_get_encoder)
nix::ioctl_readwrite!(
    drm_ioctl_mode_getencoder,
    DRM_IOCTL_BASE,
    0xA6,
    drm_mode_get_encoder
);
// DRM_IOCTL_MODE_GETCONNECTOR = DRM_IOWR(0xA7, struct drm_mode_get_connector)
nix::ioctl_readwrite!(
    drm_ioctl_mode_getconnector,
    DRM_IOCTL_BASE,
    0xA7,
    drm_mode_get_connector
);
// DRM_IOCTL_MODE_RMFB = DRM_IOWR(0xAF, unsigned int)
nix::ioctl_readwrite!(drm_ioctl_mode_rmfb, DRM_IOCTL_BASE, 0xAF, u32);
// DRM_IOCTL_MODE_CREATE_DUMB = DRM_IOWR(0xB2, struct drm_mode_create_dumb)
nix::ioctl_readwrite!(
    drm_ioctl_mode_create_dumb,
    DRM_IOCTL_BASE,
    0xB2,
    drm_mode_create_dumb
);
// DRM_IOCTL_MODE_MAP_DUMB = DRM_IOWR(0xB3, struct drm_mode_map_dumb)
nix::ioctl_readwrite!(
    drm_ioctl_mode_map_dumb,
    DRM_IOCTL_BASE,
    0xB3,
    drm_mode_map_dumb
);
// DRM_IOCTL_MODE_DESTROY_DUMB = DRM_IOWR(0xB4, struct drm_mode_destroy_dumb)
nix::ioctl_readwrite!(
    drm_ioctl_mode_destroy_dumb,
    DRM_IOCTL_BASE,
    0xB4,
    drm_mode_destroy_dumb
);
// DRM_IOCTL_MODE_ADDFB2 = DRM_IOWR(0xB8, struct drm_mode_fb_cmd2)
nix::ioctl_readwrite!(
    drm_ioctl_mode_addfb2,
    DRM_IOCTL_BASE,
    0xB8,
    drm_mode_fb_cmd2
);

// ---------------------------------------------------------------------------
// virtgpu_drm.h
// ---------------------------------------------------------------------------

pub const DRM_VIRTGPU_MAP: u8 = 0x01;
pub const DRM_VIRTGPU_EXECBUFFER: u8 = 0x02;
pub const DRM_VIRTGPU_GETPARAM: u8 = 0x03;
pub const DRM_VIRTGPU_RESOURCE_CREATE: u8 = 0x04;
pub const DRM_VIRTGPU_RESOURCE_INFO: u8 = 0x05;
pub const DRM_VIRTGPU_TRANSFER_FROM_HOST: u8 = 0x06;
pub const DRM_VIRTGPU_TRANSFER_TO_HOST: u8 = 0x07;
pub const DRM_VIRTGPU_WAIT: u8 = 0x08;
pub const DRM_VIRTGPU_GET_CAPS: u8 = 0x09;
pub const DRM_VIRTGPU_RESOURCE_CREATE_BLOB: u8 = 0x0a;
pub const DRM_VIRTGPU_CONTEXT_INIT: u8 = 0x0b;
/// gpuswap private UAPI (guest-kernel-patches, not upstream Linux).
pub const DRM_VIRTGPU_MADVISE: u8 = 0x20;

pub const VIRTGPU_MADV_WILLNEED: u32 = 0;
pub const VIRTGPU_MADV_DONTNEED: u32 = 1;

pub const VIRTGPU_PARAM_3D_FEATURES: u64 = 1;
pub const VIRTGPU_PARAM_CAPSET_QUERY_FIX: u64 = 2;
pub const VIRTGPU_PARAM_RESOURCE_BLOB: u64 = 3;
pub const VIRTGPU_PARAM_HOST_VISIBLE: u64 = 4;
pub const VIRTGPU_PARAM_CROSS_DEVICE: u64 = 5;
pub const VIRTGPU_PARAM_CONTEXT_INIT: u64 = 6;
pub const VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS: u64 = 7;
pub const VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME: u64 = 8;

pub const VIRTGPU_WAIT_NOWAIT: u32 = 1;

pub const VIRTGPU_BLOB_MEM_GUEST: u32 = 0x0001;
pub const VIRTGPU_BLOB_MEM_HOST3D: u32 = 0x0002;
pub const VIRTGPU_BLOB_MEM_HOST3D_GUEST: u32 = 0x0003;

pub const VIRTGPU_BLOB_FLAG_USE_MAPPABLE: u32 = 0x0001;
pub const VIRTGPU_BLOB_FLAG_USE_SHAREABLE: u32 = 0x0002;
pub const VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE: u32 = 0x0004;

/// `struct drm_virtgpu_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_map {
    /// Out: fake offset to pass to mmap(2) on the DRM fd.
    pub offset: u64,
    pub handle: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_map>() == 16);

/// `struct drm_virtgpu_getparam`. NB: `value` is a *user pointer* to an `int`
/// the kernel writes the answer to (virtio_gpu_getparam_ioctl: copy_to_user).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_getparam {
    pub param: u64,
    pub value: u64,
}
const _: () = assert!(size_of::<drm_virtgpu_getparam>() == 16);

/// `struct drm_virtgpu_resource_create`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_resource_create {
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
    /// Out: GEM handle.
    pub bo_handle: u32,
    /// Out: virtio-gpu resource id.
    pub res_handle: u32,
    /// Backing size in bytes (kernel rounds up to PAGE_SIZE; 0 means one page).
    pub size: u32,
    pub stride: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_resource_create>() == 56);

/// `struct drm_virtgpu_resource_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_resource_info {
    pub bo_handle: u32,
    pub res_handle: u32,
    pub size: u32,
    pub blob_mem: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_resource_info>() == 16);

/// `struct drm_virtgpu_3d_box`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_3d_box {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_3d_box>() == 24);

/// `struct drm_virtgpu_3d_transfer_to_host` (identical layout to
/// `struct drm_virtgpu_3d_transfer_from_host`, so one type serves both).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_3d_transfer {
    pub bo_handle: u32,
    pub box_: drm_virtgpu_3d_box,
    pub level: u32,
    pub offset: u32,
    pub stride: u32,
    pub layer_stride: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_3d_transfer>() == 44);

/// `struct drm_virtgpu_3d_wait`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_3d_wait {
    pub handle: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_3d_wait>() == 8);

/// `struct drm_virtgpu_madvise` (gpuswap private UAPI).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_madvise {
    pub bo_handle: u32,
    /// VIRTGPU_MADV_WILLNEED or VIRTGPU_MADV_DONTNEED.
    pub madv: u32,
    /// Out: 1 if the BO still has its content, 0 once purged.
    pub retained: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<drm_virtgpu_madvise>() == 16);

/// `struct drm_virtgpu_resource_create_blob`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct drm_virtgpu_resource_create_blob {
    pub blob_mem: u32,
    pub blob_flags: u32,
    /// Out: GEM handle.
    pub bo_handle: u32,
    /// Out: virtio-gpu resource id.
    pub res_handle: u32,
    pub size: u64,
    pub pad: u32,
    pub cmd_size: u32,
    pub cmd: u64,
    pub blob_id: u64,
}
const _: () = assert!(size_of::<drm_virtgpu_resource_create_blob>() == 48);

const fn cmd(nr: u8) -> u8 {
    DRM_COMMAND_BASE + nr
}

// DRM_IOCTL_VIRTGPU_MAP = DRM_IOWR(DRM_COMMAND_BASE + DRM_VIRTGPU_MAP, struct drm_virtgpu_map)
nix::ioctl_readwrite!(
    virtgpu_ioctl_map,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_MAP),
    drm_virtgpu_map
);
// DRM_IOCTL_VIRTGPU_GETPARAM
nix::ioctl_readwrite!(
    virtgpu_ioctl_getparam,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_GETPARAM),
    drm_virtgpu_getparam
);
// DRM_IOCTL_VIRTGPU_RESOURCE_CREATE
nix::ioctl_readwrite!(
    virtgpu_ioctl_resource_create,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_RESOURCE_CREATE),
    drm_virtgpu_resource_create
);
// DRM_IOCTL_VIRTGPU_RESOURCE_INFO
nix::ioctl_readwrite!(
    virtgpu_ioctl_resource_info,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_RESOURCE_INFO),
    drm_virtgpu_resource_info
);
// DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST (struct drm_virtgpu_3d_transfer_from_host)
nix::ioctl_readwrite!(
    virtgpu_ioctl_transfer_from_host,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_TRANSFER_FROM_HOST),
    drm_virtgpu_3d_transfer
);
// DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST (struct drm_virtgpu_3d_transfer_to_host)
nix::ioctl_readwrite!(
    virtgpu_ioctl_transfer_to_host,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_TRANSFER_TO_HOST),
    drm_virtgpu_3d_transfer
);
// DRM_IOCTL_VIRTGPU_WAIT
nix::ioctl_readwrite!(
    virtgpu_ioctl_wait,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_WAIT),
    drm_virtgpu_3d_wait
);
// DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB
nix::ioctl_readwrite!(
    virtgpu_ioctl_resource_create_blob,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_RESOURCE_CREATE_BLOB),
    drm_virtgpu_resource_create_blob
);
// DRM_IOCTL_VIRTGPU_MADVISE (gpuswap private)
nix::ioctl_readwrite!(
    virtgpu_ioctl_madvise,
    DRM_IOCTL_BASE,
    cmd(DRM_VIRTGPU_MADVISE),
    drm_virtgpu_madvise
);

// ---------------------------------------------------------------------------
// virtio_gpu.h: enum virtio_gpu_formats
// ---------------------------------------------------------------------------

pub const VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: u32 = 1;
pub const VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: u32 = 2;
pub const VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: u32 = 3;
pub const VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: u32 = 4;
pub const VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: u32 = 67;
pub const VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: u32 = 68;
pub const VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: u32 = 121;
pub const VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: u32 = 134;

/// `PIPE_TEXTURE_2D` (gallium `enum pipe_texture_target`): the only `target`
/// virtio_gpu_resource_create_ioctl accepts without virgl.
pub const PIPE_TEXTURE_2D: u32 = 2;
/// `VIRGL_BIND_RENDER_TARGET | VIRGL_BIND_SAMPLER_VIEW` (virgl_hw.h); ignored on the 2D path.
pub const VIRGL_BIND_RENDER_TARGET_SAMPLER: u32 = (1 << 1) | (1 << 3);

#[cfg(test)]
mod tests {
    use super::*;

    // Request numbers as libdrm / strace print them on x86_64.
    #[test]
    fn ioctl_numbers_match_kernel_headers() {
        type N = nix::sys::ioctl::ioctl_num_type;
        let rw = |nr: u8, size: usize| nix::request_code_readwrite!(DRM_IOCTL_BASE, nr, size) as N;
        assert_eq!(rw(0x00, size_of::<drm_version>()), 0xC040_6400u32 as N);
        let gem_close = nix::request_code_write!(DRM_IOCTL_BASE, 0x09, size_of::<drm_gem_close>());
        assert_eq!(gem_close as N, 0x4008_6409u32 as N);
        assert_eq!(
            rw(cmd(DRM_VIRTGPU_MAP), size_of::<drm_virtgpu_map>()),
            0xC010_6441u32 as N
        );
        assert_eq!(
            rw(cmd(DRM_VIRTGPU_GETPARAM), size_of::<drm_virtgpu_getparam>()),
            0xC010_6443u32 as N
        );
        assert_eq!(
            rw(
                cmd(DRM_VIRTGPU_RESOURCE_CREATE),
                size_of::<drm_virtgpu_resource_create>()
            ),
            0xC038_6444u32 as N
        );
        assert_eq!(
            rw(
                cmd(DRM_VIRTGPU_TRANSFER_TO_HOST),
                size_of::<drm_virtgpu_3d_transfer>()
            ),
            0xC02C_6447u32 as N
        );
        assert_eq!(
            rw(
                cmd(DRM_VIRTGPU_RESOURCE_CREATE_BLOB),
                size_of::<drm_virtgpu_resource_create_blob>()
            ),
            0xC030_644Au32 as N
        );
        assert_eq!(
            rw(0xB2, size_of::<drm_mode_create_dumb>()),
            0xC020_64B2u32 as N
        );
        assert_eq!(rw(0xB8, size_of::<drm_mode_fb_cmd2>()), 0xC068_64B8u32 as N);
        assert_eq!(rw(0xA2, size_of::<drm_mode_crtc>()), 0xC068_64A2u32 as N);
        assert_eq!(
            rw(0xA7, size_of::<drm_mode_get_connector>()),
            0xC050_64A7u32 as N
        );
        assert_eq!(
            rw(cmd(DRM_VIRTGPU_MADVISE), size_of::<drm_virtgpu_madvise>()),
            0xC010_6460u32 as N
        );
        assert_eq!(DRM_FORMAT_XRGB8888, 0x3432_5258);
    }
}
