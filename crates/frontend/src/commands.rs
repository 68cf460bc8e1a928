//! Typed virtio-gpu commands over [`GpuFrontend`], optionally fenced.

use gpuswap_protocol::ctrl_type as t;
use gpuswap_protocol::flags;
use gpuswap_protocol::wire::*;
use gpuswap_protocol::ErrorCode;
use vm_memory::ByteValued;

use crate::error::{Error, QueueId, Result};
use crate::frontend::GpuFrontend;

/// A fence to attach to a request: the response must echo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// `fence_id`.
    pub id: u64,
    /// `ctx_id`.
    pub ctx_id: u32,
    /// `ring_idx`; sets `VIRTIO_GPU_FLAG_INFO_RING_IDX` when present.
    pub ring_idx: Option<u8>,
}

impl Fence {
    /// A fence on the global timeline.
    pub const fn new(id: u64) -> Self {
        Fence {
            id,
            ctx_id: 0,
            ring_idx: None,
        }
    }

    /// A fence on ring `ring_idx` of context `ctx_id`.
    pub const fn on_ring(id: u64, ctx_id: u32, ring_idx: u8) -> Self {
        Fence {
            id,
            ctx_id,
            ring_idx: Some(ring_idx),
        }
    }
}

/// `virtio_gpu_resp_capset_info`, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetInfo {
    /// Capability set id.
    pub capset_id: u32,
    /// Highest version.
    pub max_version: u32,
    /// Largest size of the set.
    pub max_size: u32,
}

/// Builds a request header.
pub fn request_header(type_: u32, fence: Option<Fence>) -> CtrlHeader {
    let mut hdr = CtrlHeader {
        type_,
        ..Default::default()
    };
    if let Some(f) = fence {
        hdr.flags = flags::FENCE;
        hdr.fence_id = f.id;
        hdr.ctx_id = f.ctx_id;
        if let Some(r) = f.ring_idx {
            hdr.flags |= flags::INFO_RING_IDX;
            hdr.ring_idx = r;
        }
    }
    hdr
}

/// Encodes a request: header, body, then trailing bytes (entries).
pub fn encode_request(hdr: &CtrlHeader, body: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + body.len() + trailer.len());
    v.extend_from_slice(hdr.as_slice());
    v.extend_from_slice(body);
    v.extend_from_slice(trailer);
    v
}

/// Encodes memory entries as they follow an attach or create-blob body.
pub fn encode_entries(entries: &[MemEntry]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.as_slice().to_vec()).collect()
}

/// Decodes a response header and checks that it echoes `fence`.
pub fn check_fence(resp: &[u8], fence: Option<Fence>) -> Result<CtrlHeader> {
    let n = std::mem::size_of::<CtrlHeader>();
    if resp.len() < n {
        return Err(Error::ShortResponse {
            type_: 0,
            need: n,
            got: resp.len(),
        });
    }
    let mut hdr = CtrlHeader::default();
    hdr.as_mut_slice().copy_from_slice(&resp[..n]);
    if let Some(f) = fence {
        let mut ok =
            hdr.flags & flags::FENCE != 0 && hdr.fence_id == f.id && hdr.ctx_id == f.ctx_id;
        if let Some(r) = f.ring_idx {
            ok &= hdr.flags & flags::INFO_RING_IDX != 0 && hdr.ring_idx == r;
        }
        if !ok {
            return Err(Error::FenceMismatch {
                sent: f,
                flags: hdr.flags,
                fence_id: hdr.fence_id,
                ctx_id: hdr.ctx_id,
                ring_idx: hdr.ring_idx,
            });
        }
    }
    Ok(hdr)
}

/// [`check_fence`], then turns an error response into [`Error::Device`]
/// and any type but `expected` into [`Error::UnexpectedResponse`].
pub fn check_response(resp: &[u8], expected: u32, fence: Option<Fence>) -> Result<CtrlHeader> {
    let hdr = check_fence(resp, fence).map_err(|e| match e {
        Error::ShortResponse { need, got, .. } => Error::ShortResponse {
            type_: expected,
            need,
            got,
        },
        e => e,
    })?;
    if let Some(code) = ErrorCode::from_type_code(hdr.type_) {
        return Err(Error::Device(code));
    }
    if hdr.type_ != expected {
        return Err(Error::UnexpectedResponse {
            expected,
            got: hdr.type_,
        });
    }
    Ok(hdr)
}

fn decode<T: ByteValued + Default>(resp: &[u8], type_: u32) -> Result<T> {
    let n = std::mem::size_of::<T>();
    if resp.len() < n {
        return Err(Error::ShortResponse {
            type_,
            need: n,
            got: resp.len(),
        });
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(&resp[..n]);
    Ok(v)
}

/// Typed commands, all sent with the same optional fence. Get one from
/// [`GpuFrontend::cmd`] or [`GpuFrontend::fenced`]; the unfenced forms are
/// also methods of [`GpuFrontend`] itself.
pub struct Commands<'a> {
    gpu: &'a mut GpuFrontend,
    fence: Option<Fence>,
}

impl GpuFrontend {
    /// Typed commands without a fence.
    pub fn cmd(&mut self) -> Commands<'_> {
        Commands {
            gpu: self,
            fence: None,
        }
    }

    /// Typed commands carrying `fence`; each response must echo it.
    pub fn fenced(&mut self, fence: Fence) -> Commands<'_> {
        Commands {
            gpu: self,
            fence: Some(fence),
        }
    }
}

impl Commands<'_> {
    /// Sends a control request with this header's type and `body` +
    /// `trailer`, waits, checks the fence and returns the header and the
    /// whole response, whatever its type.
    pub fn raw(
        &mut self,
        type_: u32,
        body: &[u8],
        trailer: &[u8],
        response_capacity: usize,
    ) -> Result<(CtrlHeader, Vec<u8>)> {
        let req = encode_request(&request_header(type_, self.fence), body, trailer);
        let resp = self.gpu.submit(QueueId::Control, &req, response_capacity)?;
        let hdr = check_fence(&resp, self.fence)?;
        Ok((hdr, resp))
    }

    fn call(
        &mut self,
        type_: u32,
        body: &[u8],
        trailer: &[u8],
        expected: u32,
        response_capacity: usize,
    ) -> Result<Vec<u8>> {
        let req = encode_request(&request_header(type_, self.fence), body, trailer);
        let resp = self.gpu.submit(QueueId::Control, &req, response_capacity)?;
        check_response(&resp, expected, self.fence)?;
        Ok(resp)
    }

    fn nodata(&mut self, type_: u32, body: &[u8], trailer: &[u8]) -> Result<()> {
        self.call(
            type_,
            body,
            trailer,
            t::RESP_OK_NODATA,
            std::mem::size_of::<CtrlHeader>(),
        )
        .map(|_| ())
    }

    /// GET_DISPLAY_INFO.
    pub fn get_display_info(&mut self) -> Result<[DisplayOne; MAX_SCANOUTS]> {
        let n = std::mem::size_of::<RespDisplayInfo>();
        let resp = self.call(t::GET_DISPLAY_INFO, &[], &[], t::RESP_OK_DISPLAY_INFO, n)?;
        Ok(decode::<RespDisplayInfo>(&resp, t::RESP_OK_DISPLAY_INFO)?.pmodes)
    }

    /// GET_EDID: the EDID blob (trimmed to the reported size).
    pub fn get_edid(&mut self, scanout: u32) -> Result<Vec<u8>> {
        let body = GetEdid {
            scanout,
            padding: 0,
        };
        let n = std::mem::size_of::<RespEdid>();
        let resp = self.call(t::GET_EDID, body.as_slice(), &[], t::RESP_OK_EDID, n)?;
        let r: RespEdid = decode(&resp, t::RESP_OK_EDID)?;
        if r.size as usize > EDID_BLOB_SIZE {
            return Err(Error::Backend(format!(
                "EDID size {} > {EDID_BLOB_SIZE}",
                r.size
            )));
        }
        Ok(r.edid[..r.size as usize].to_vec())
    }

    /// GET_CAPSET_INFO.
    pub fn get_capset_info(&mut self, capset_index: u32) -> Result<CapsetInfo> {
        let body = GetCapsetInfo {
            capset_index,
            padding: 0,
        };
        let n = std::mem::size_of::<RespCapsetInfo>();
        let resp = self.call(
            t::GET_CAPSET_INFO,
            body.as_slice(),
            &[],
            t::RESP_OK_CAPSET_INFO,
            n,
        )?;
        let r: RespCapsetInfo = decode(&resp, t::RESP_OK_CAPSET_INFO)?;
        Ok(CapsetInfo {
            capset_id: r.capset_id,
            max_version: r.capset_max_version,
            max_size: r.capset_max_size,
        })
    }

    /// GET_CAPSET with room for `max_size` bytes; returns the capset data.
    pub fn get_capset(
        &mut self,
        capset_id: u32,
        capset_version: u32,
        max_size: u32,
    ) -> Result<Vec<u8>> {
        let body = GetCapset {
            capset_id,
            capset_version,
        };
        let n = std::mem::size_of::<CtrlHeader>() + max_size as usize;
        let resp = self.call(t::GET_CAPSET, body.as_slice(), &[], t::RESP_OK_CAPSET, n)?;
        Ok(resp[std::mem::size_of::<CtrlHeader>()..].to_vec())
    }

    /// RESOURCE_CREATE_2D.
    pub fn resource_create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let body = ResourceCreate2d {
            resource_id,
            format,
            width,
            height,
        };
        self.nodata(t::RESOURCE_CREATE_2D, body.as_slice(), &[])
    }

    /// RESOURCE_UNREF.
    pub fn resource_unref(&mut self, resource_id: u32) -> Result<()> {
        let body = ResourceId {
            resource_id,
            padding: 0,
        };
        self.nodata(t::RESOURCE_UNREF, body.as_slice(), &[])
    }

    /// SET_SCANOUT (resource 0 disables the scanout).
    pub fn set_scanout(&mut self, scanout_id: u32, resource_id: u32, r: Rect) -> Result<()> {
        let body = SetScanout {
            r,
            scanout_id,
            resource_id,
        };
        self.nodata(t::SET_SCANOUT, body.as_slice(), &[])
    }

    /// RESOURCE_FLUSH.
    pub fn resource_flush(&mut self, resource_id: u32, r: Rect) -> Result<()> {
        let body = ResourceFlush {
            r,
            resource_id,
            padding: 0,
        };
        self.nodata(t::RESOURCE_FLUSH, body.as_slice(), &[])
    }

    /// TRANSFER_TO_HOST_2D of rectangle `r`, reading the backing from byte
    /// `offset`.
    pub fn transfer_to_host_2d(&mut self, resource_id: u32, r: Rect, offset: u64) -> Result<()> {
        let body = TransferToHost2d {
            r,
            offset,
            resource_id,
            padding: 0,
        };
        self.nodata(t::TRANSFER_TO_HOST_2D, body.as_slice(), &[])
    }

    /// RESOURCE_ATTACH_BACKING with these entries.
    pub fn attach_backing(&mut self, resource_id: u32, entries: &[MemEntry]) -> Result<()> {
        let body = ResourceAttachBacking {
            resource_id,
            nr_entries: entries.len() as u32,
        };
        self.nodata(
            t::RESOURCE_ATTACH_BACKING,
            body.as_slice(),
            &encode_entries(entries),
        )
    }

    /// RESOURCE_DETACH_BACKING.
    pub fn detach_backing(&mut self, resource_id: u32) -> Result<()> {
        let body = ResourceId {
            resource_id,
            padding: 0,
        };
        self.nodata(t::RESOURCE_DETACH_BACKING, body.as_slice(), &[])
    }

    /// RESOURCE_ASSIGN_UUID: the UUID the device assigned.
    pub fn resource_assign_uuid(&mut self, resource_id: u32) -> Result<[u8; 16]> {
        let body = ResourceId {
            resource_id,
            padding: 0,
        };
        let n = std::mem::size_of::<RespResourceUuid>();
        let resp = self.call(
            t::RESOURCE_ASSIGN_UUID,
            body.as_slice(),
            &[],
            t::RESP_OK_RESOURCE_UUID,
            n,
        )?;
        Ok(decode::<RespResourceUuid>(&resp, t::RESP_OK_RESOURCE_UUID)?.uuid)
    }

    /// RESOURCE_CREATE_BLOB (`blob_id` 0) with these entries (may be empty:
    /// the blob then starts without backing).
    pub fn resource_create_blob(
        &mut self,
        resource_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        size: u64,
        entries: &[MemEntry],
    ) -> Result<()> {
        self.resource_create_blob_with_id(resource_id, blob_mem, blob_flags, 0, size, entries)
    }

    /// RESOURCE_CREATE_BLOB with an explicit `blob_id`.
    pub fn resource_create_blob_with_id(
        &mut self,
        resource_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
        entries: &[MemEntry],
    ) -> Result<()> {
        let body = ResourceCreateBlob {
            resource_id,
            blob_mem,
            blob_flags,
            nr_entries: entries.len() as u32,
            blob_id,
            size,
        };
        self.nodata(
            t::RESOURCE_CREATE_BLOB,
            body.as_slice(),
            &encode_entries(entries),
        )
    }

    /// SET_SCANOUT_BLOB.
    pub fn set_scanout_blob(&mut self, args: &SetScanoutBlob) -> Result<()> {
        self.nodata(t::SET_SCANOUT_BLOB, args.as_slice(), &[])
    }

    fn cursor(&mut self, type_: u32, body: UpdateCursor) -> Result<u32> {
        let req = encode_request(&request_header(type_, self.fence), body.as_slice(), &[]);
        let t = self.gpu.enqueue(QueueId::Cursor, &req, 0)?;
        self.gpu.kick(QueueId::Cursor)?;
        Ok(self.gpu.wait_for(QueueId::Cursor, t)?.used_len)
    }

    /// UPDATE_CURSOR on the cursor queue (no response buffer, as Linux
    /// sends it); returns the used length. The fence is sent but cannot be
    /// checked.
    pub fn update_cursor(
        &mut self,
        pos: CursorPos,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    ) -> Result<u32> {
        self.cursor(
            t::UPDATE_CURSOR,
            UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
                padding: 0,
            },
        )
    }

    /// MOVE_CURSOR on the cursor queue; `resource_id` 0 hides the cursor.
    pub fn move_cursor(&mut self, pos: CursorPos, resource_id: u32) -> Result<u32> {
        self.cursor(
            t::MOVE_CURSOR,
            UpdateCursor {
                pos,
                resource_id,
                ..Default::default()
            },
        )
    }
}

macro_rules! unfenced {
    ($( $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        /// Unfenced typed commands (see [`Commands`]).
        impl GpuFrontend {
            $(
                $(#[$m])*
                pub fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                    self.cmd().$name($($arg),*)
                }
            )*
        }
    };
}

unfenced! {
    /// GET_DISPLAY_INFO.
    fn get_display_info(&mut self) -> Result<[DisplayOne; MAX_SCANOUTS]>;
    /// GET_EDID.
    fn get_edid(&mut self, scanout: u32) -> Result<Vec<u8>>;
    /// GET_CAPSET_INFO.
    fn get_capset_info(&mut self, capset_index: u32) -> Result<CapsetInfo>;
    /// GET_CAPSET.
    fn get_capset(&mut self, capset_id: u32, capset_version: u32, max_size: u32) -> Result<Vec<u8>>;
    /// RESOURCE_CREATE_2D.
    fn resource_create_2d(&mut self, resource_id: u32, format: u32, width: u32, height: u32) -> Result<()>;
    /// RESOURCE_UNREF.
    fn resource_unref(&mut self, resource_id: u32) -> Result<()>;
    /// SET_SCANOUT.
    fn set_scanout(&mut self, scanout_id: u32, resource_id: u32, r: Rect) -> Result<()>;
    /// RESOURCE_FLUSH.
    fn resource_flush(&mut self, resource_id: u32, r: Rect) -> Result<()>;
    /// TRANSFER_TO_HOST_2D.
    fn transfer_to_host_2d(&mut self, resource_id: u32, r: Rect, offset: u64) -> Result<()>;
    /// RESOURCE_ATTACH_BACKING.
    fn attach_backing(&mut self, resource_id: u32, entries: &[MemEntry]) -> Result<()>;
    /// RESOURCE_DETACH_BACKING.
    fn detach_backing(&mut self, resource_id: u32) -> Result<()>;
    /// RESOURCE_ASSIGN_UUID.
    fn resource_assign_uuid(&mut self, resource_id: u32) -> Result<[u8; 16]>;
    /// RESOURCE_CREATE_BLOB.
    fn resource_create_blob(&mut self, resource_id: u32, blob_mem: u32, blob_flags: u32, size: u64, entries: &[MemEntry]) -> Result<()>;
    /// SET_SCANOUT_BLOB.
    fn set_scanout_blob(&mut self, args: &SetScanoutBlob) -> Result<()>;
    /// UPDATE_CURSOR.
    fn update_cursor(&mut self, pos: CursorPos, resource_id: u32, hot_x: u32, hot_y: u32) -> Result<u32>;
    /// MOVE_CURSOR.
    fn move_cursor(&mut self, pos: CursorPos, resource_id: u32) -> Result<u32>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_is_checked() {
        let f = Fence::on_ring(9, 2, 1);
        let hdr = request_header(t::RESOURCE_FLUSH, Some(f));
        assert_eq!(hdr.flags, flags::FENCE | flags::INFO_RING_IDX);
        let mut ok = hdr;
        ok.type_ = t::RESP_OK_NODATA;
        assert!(check_response(ok.as_slice(), t::RESP_OK_NODATA, Some(f)).is_ok());
        let mut bad = ok;
        bad.fence_id = 8;
        assert!(matches!(
            check_response(bad.as_slice(), t::RESP_OK_NODATA, Some(f)),
            Err(Error::FenceMismatch { .. })
        ));
        // A backend that echoes the fence but not the ring.
        let mut no_ring = ok;
        no_ring.flags = flags::FENCE;
        no_ring.ring_idx = 0;
        assert!(matches!(
            check_response(no_ring.as_slice(), t::RESP_OK_NODATA, Some(f)),
            Err(Error::FenceMismatch { .. })
        ));
        let mut err = ok;
        err.type_ = t::RESP_ERR_INVALID_RESOURCE_ID;
        assert_eq!(
            check_response(err.as_slice(), t::RESP_OK_NODATA, Some(f))
                .unwrap_err()
                .device_error(),
            Some(ErrorCode::InvalidResourceId)
        );
        assert!(matches!(
            check_response(&[0; 10], t::RESP_OK_NODATA, None),
            Err(Error::ShortResponse { .. })
        ));
        assert!(matches!(
            check_response(ok.as_slice(), t::RESP_OK_EDID, None),
            Err(Error::UnexpectedResponse { .. })
        ));
    }

    #[test]
    fn attach_request_layout() {
        let e = [MemEntry {
            addr: 0x1000,
            length: 4096,
            padding: 0,
        }];
        let body = ResourceAttachBacking {
            resource_id: 1,
            nr_entries: 1,
        };
        let req = encode_request(
            &request_header(t::RESOURCE_ATTACH_BACKING, None),
            body.as_slice(),
            &encode_entries(&e),
        );
        assert_eq!(req.len(), 24 + 8 + 16);
    }
}
