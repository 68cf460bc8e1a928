//! `#[repr(C)]` wire structs of the virtio-gpu control and cursor queues
//! (virtio spec 1.3, section 5.7.6), all little-endian as on every host
//! gpuswap supports.
//!
//! Field names follow the spec so the two can be read side by side.

use vm_memory::ByteValued;

/// `struct virtio_gpu_ctrl_hdr`: starts every request and response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtrlHeader {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
    pub padding: [u8; 3],
}

/// `struct virtio_gpu_rect`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// `struct virtio_gpu_display_one`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DisplayOne {
    pub r: Rect,
    pub enabled: u32,
    pub flags: u32,
}

/// Scanouts a virtio-gpu device may expose.
pub const MAX_SCANOUTS: usize = 16;

/// `struct virtio_gpu_resp_display_info`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespDisplayInfo {
    pub hdr: CtrlHeader,
    pub pmodes: [DisplayOne; MAX_SCANOUTS],
}

/// `struct virtio_gpu_get_edid` (body after the header).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetEdid {
    pub scanout: u32,
    pub padding: u32,
}

/// Size of the EDID blob in `virtio_gpu_resp_edid`.
pub const EDID_BLOB_SIZE: usize = 1024;

/// `struct virtio_gpu_resp_edid`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RespEdid {
    pub hdr: CtrlHeader,
    pub size: u32,
    pub padding: u32,
    pub edid: [u8; EDID_BLOB_SIZE],
}

impl Default for RespEdid {
    fn default() -> Self {
        RespEdid {
            hdr: CtrlHeader::default(),
            size: 0,
            padding: 0,
            edid: [0; EDID_BLOB_SIZE],
        }
    }
}

/// `struct virtio_gpu_resource_create_2d` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreate2d {
    pub resource_id: u32,
    pub format: u32,
    pub width: u32,
    pub height: u32,
}

/// Body shared by `RESOURCE_UNREF`, `RESOURCE_DETACH_BACKING` and
/// `RESOURCE_ASSIGN_UUID`: a resource id and padding.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceId {
    pub resource_id: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_set_scanout` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetScanout {
    pub r: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
}

/// `struct virtio_gpu_resource_flush` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceFlush {
    pub r: Rect,
    pub resource_id: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_transfer_to_host_2d` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferToHost2d {
    pub r: Rect,
    pub offset: u64,
    pub resource_id: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_mem_entry`: one guest-physical extent of a backing.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemEntry {
    pub addr: u64,
    pub length: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_resource_attach_backing` (body, entries follow).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttachBacking {
    pub resource_id: u32,
    pub nr_entries: u32,
}

/// `struct virtio_gpu_get_capset_info` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetCapsetInfo {
    pub capset_index: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_resp_capset_info`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespCapsetInfo {
    pub hdr: CtrlHeader,
    pub capset_id: u32,
    pub capset_max_version: u32,
    pub capset_max_size: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_get_capset` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetCapset {
    pub capset_id: u32,
    pub capset_version: u32,
}

/// `struct virtio_gpu_resp_resource_uuid`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespResourceUuid {
    pub hdr: CtrlHeader,
    pub uuid: [u8; 16],
}

/// `struct virtio_gpu_resource_create_blob` (body, entries follow).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreateBlob {
    pub resource_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub nr_entries: u32,
    pub blob_id: u64,
    pub size: u64,
}

/// `struct virtio_gpu_set_scanout_blob` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetScanoutBlob {
    pub r: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub padding: u32,
    pub strides: [u32; 4],
    pub offsets: [u32; 4],
}

/// `struct virtio_gpu_resource_map_blob` (body).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceMapBlob {
    pub resource_id: u32,
    pub padding: u32,
    pub offset: u64,
}

/// `struct virtio_gpu_cursor_pos`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_update_cursor` (body; also used by MOVE_CURSOR).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateCursor {
    pub pos: CursorPos,
    pub resource_id: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub padding: u32,
}

/// `struct virtio_gpu_config`: the device configuration space.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtioGpuConfig {
    pub events_read: u32,
    pub events_clear: u32,
    pub num_scanouts: u32,
    pub num_capsets: u32,
}

// SAFETY: every type below is `#[repr(C)]`, made only of integers and
// arrays of integers, with explicit padding fields, so it has no implicit
// padding and every bit pattern is a valid value.
unsafe impl ByteValued for CtrlHeader {}
// SAFETY: see above.
unsafe impl ByteValued for Rect {}
// SAFETY: see above.
unsafe impl ByteValued for DisplayOne {}
// SAFETY: see above.
unsafe impl ByteValued for RespDisplayInfo {}
// SAFETY: see above.
unsafe impl ByteValued for GetEdid {}
// SAFETY: see above.
unsafe impl ByteValued for RespEdid {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreate2d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceId {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanout {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceFlush {}
// SAFETY: see above.
unsafe impl ByteValued for TransferToHost2d {}
// SAFETY: see above.
unsafe impl ByteValued for MemEntry {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceAttachBacking {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for RespCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapset {}
// SAFETY: see above.
unsafe impl ByteValued for RespResourceUuid {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreateBlob {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanoutBlob {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceMapBlob {}
// SAFETY: see above.
unsafe impl ByteValued for CursorPos {}
// SAFETY: see above.
unsafe impl ByteValued for UpdateCursor {}
// SAFETY: see above.
unsafe impl ByteValued for VirtioGpuConfig {}

// Sizes from the virtio spec; a mismatch here is a wire-format bug.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<CtrlHeader>() == 24);
    assert!(size_of::<Rect>() == 16);
    assert!(size_of::<RespDisplayInfo>() == 24 + 16 * 24);
    assert!(size_of::<RespEdid>() == 24 + 8 + 1024);
    assert!(size_of::<ResourceCreate2d>() == 16);
    assert!(size_of::<SetScanout>() == 24);
    assert!(size_of::<ResourceFlush>() == 24);
    assert!(size_of::<TransferToHost2d>() == 32);
    assert!(size_of::<MemEntry>() == 16);
    assert!(size_of::<RespCapsetInfo>() == 40);
    assert!(size_of::<RespResourceUuid>() == 40);
    assert!(size_of::<ResourceCreateBlob>() == 32);
    assert!(size_of::<SetScanoutBlob>() == 72);
    assert!(size_of::<ResourceMapBlob>() == 16);
    assert!(size_of::<UpdateCursor>() == 32);
    assert!(size_of::<VirtioGpuConfig>() == 16);
};
