//! The virtio-gpu wire format as gpuswap speaks it: typed `#[repr(C)]`
//! structs ([`wire`]), constants, and validated decoding of requests into
//! [`Command`] plus encoding of [`Response`]s, and the EDID blob GET_EDID
//! carries ([`edid`]). No I/O: callers hand in the bytes of a request and
//! get bytes back, so every rule here is testable without a queue.

pub mod edid;
pub mod wire;

mod command;
mod response;

pub use command::{Command, DecodeError, GuestExtent, Request};
pub use response::{ErrorCode, Response};

/// Feature bits (virtio spec 5.7.3).
pub mod features {
    pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
    pub const VIRTIO_GPU_F_EDID: u32 = 1;
    pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
    pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
    pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;
}

/// Request and response type codes (`enum virtio_gpu_ctrl_type`).
pub mod ctrl_type {
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    pub const RESOURCE_UNREF: u32 = 0x0102;
    pub const SET_SCANOUT: u32 = 0x0103;
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    pub const GET_CAPSET_INFO: u32 = 0x0108;
    pub const GET_CAPSET: u32 = 0x0109;
    pub const GET_EDID: u32 = 0x010a;
    pub const RESOURCE_ASSIGN_UUID: u32 = 0x010b;
    pub const RESOURCE_CREATE_BLOB: u32 = 0x010c;
    pub const SET_SCANOUT_BLOB: u32 = 0x010d;

    pub const CTX_CREATE: u32 = 0x0200;
    pub const CTX_DESTROY: u32 = 0x0201;
    pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
    pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
    pub const RESOURCE_CREATE_3D: u32 = 0x0204;
    pub const TRANSFER_TO_HOST_3D: u32 = 0x0205;
    pub const TRANSFER_FROM_HOST_3D: u32 = 0x0206;
    pub const SUBMIT_3D: u32 = 0x0207;
    pub const RESOURCE_MAP_BLOB: u32 = 0x0208;
    pub const RESOURCE_UNMAP_BLOB: u32 = 0x0209;

    pub const UPDATE_CURSOR: u32 = 0x0300;
    pub const MOVE_CURSOR: u32 = 0x0301;

    pub const RESP_OK_NODATA: u32 = 0x1100;
    pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
    pub const RESP_OK_CAPSET_INFO: u32 = 0x1102;
    pub const RESP_OK_CAPSET: u32 = 0x1103;
    pub const RESP_OK_EDID: u32 = 0x1104;
    pub const RESP_OK_RESOURCE_UUID: u32 = 0x1105;
    pub const RESP_OK_MAP_INFO: u32 = 0x1106;

    pub const RESP_ERR_UNSPEC: u32 = 0x1200;
    pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

    /// A short, stable name for a request type, for logs and counters.
    pub fn name(type_: u32) -> &'static str {
        match type_ {
            GET_DISPLAY_INFO => "get_display_info",
            RESOURCE_CREATE_2D => "resource_create_2d",
            RESOURCE_UNREF => "resource_unref",
            SET_SCANOUT => "set_scanout",
            RESOURCE_FLUSH => "resource_flush",
            TRANSFER_TO_HOST_2D => "transfer_to_host_2d",
            RESOURCE_ATTACH_BACKING => "resource_attach_backing",
            RESOURCE_DETACH_BACKING => "resource_detach_backing",
            GET_CAPSET_INFO => "get_capset_info",
            GET_CAPSET => "get_capset",
            GET_EDID => "get_edid",
            RESOURCE_ASSIGN_UUID => "resource_assign_uuid",
            RESOURCE_CREATE_BLOB => "resource_create_blob",
            SET_SCANOUT_BLOB => "set_scanout_blob",
            CTX_CREATE => "ctx_create",
            CTX_DESTROY => "ctx_destroy",
            CTX_ATTACH_RESOURCE => "ctx_attach_resource",
            CTX_DETACH_RESOURCE => "ctx_detach_resource",
            RESOURCE_CREATE_3D => "resource_create_3d",
            TRANSFER_TO_HOST_3D => "transfer_to_host_3d",
            TRANSFER_FROM_HOST_3D => "transfer_from_host_3d",
            SUBMIT_3D => "submit_3d",
            RESOURCE_MAP_BLOB => "resource_map_blob",
            RESOURCE_UNMAP_BLOB => "resource_unmap_blob",
            UPDATE_CURSOR => "update_cursor",
            MOVE_CURSOR => "move_cursor",
            _ => "unknown",
        }
    }

    /// Parses a name produced by [`name`] back into its type code.
    pub fn from_name(name: &str) -> Option<u32> {
        (GET_DISPLAY_INFO..=SET_SCANOUT_BLOB)
            .chain(CTX_CREATE..=RESOURCE_UNMAP_BLOB)
            .chain(UPDATE_CURSOR..=MOVE_CURSOR)
            .find(|&t| self::name(t) == name)
    }
}

/// `virtio_gpu_ctrl_hdr.flags` bits.
pub mod flags {
    /// The driver wants a fence signalled when this command completes.
    pub const FENCE: u32 = 1 << 0;
    /// `ring_idx` is valid: the fence belongs to that context timeline.
    pub const INFO_RING_IDX: u32 = 1 << 1;
}

/// `blob_mem` values of RESOURCE_CREATE_BLOB.
pub mod blob_mem {
    pub const GUEST: u32 = 0x0001;
    pub const HOST3D: u32 = 0x0002;
    pub const HOST3D_GUEST: u32 = 0x0003;
}

/// `blob_flags` bits of RESOURCE_CREATE_BLOB.
pub mod blob_flags {
    pub const USE_MAPPABLE: u32 = 0x0001;
    pub const USE_SHAREABLE: u32 = 0x0002;
    pub const USE_CROSS_DEVICE: u32 = 0x0004;
}

/// `enum virtio_gpu_formats`. All are 4 bytes per pixel.
pub mod format {
    pub const B8G8R8A8_UNORM: u32 = 1;
    pub const B8G8R8X8_UNORM: u32 = 2;
    pub const A8R8G8B8_UNORM: u32 = 3;
    pub const X8R8G8B8_UNORM: u32 = 4;
    pub const R8G8B8A8_UNORM: u32 = 67;
    pub const X8B8G8R8_UNORM: u32 = 68;
    pub const A8B8G8R8_UNORM: u32 = 121;
    pub const R8G8B8X8_UNORM: u32 = 134;

    /// Whether `format` is one the spec defines.
    pub fn is_valid(format: u32) -> bool {
        matches!(
            format,
            B8G8R8A8_UNORM
                | B8G8R8X8_UNORM
                | A8R8G8B8_UNORM
                | X8R8G8B8_UNORM
                | R8G8B8A8_UNORM
                | X8B8G8R8_UNORM
                | A8B8G8R8_UNORM
                | R8G8B8X8_UNORM
        )
    }

    /// Bytes per pixel of every virtio-gpu format.
    pub const BYTES_PER_PIXEL: u32 = 4;
}
