//! Responses and their encoding.

use vm_memory::ByteValued;

use crate::ctrl_type as t;
use crate::flags;
use crate::wire::*;

/// The error responses of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unspec,
    OutOfMemory,
    InvalidScanoutId,
    InvalidResourceId,
    InvalidContextId,
    InvalidParameter,
}

impl ErrorCode {
    /// The response type code.
    pub fn type_code(self) -> u32 {
        match self {
            ErrorCode::Unspec => t::RESP_ERR_UNSPEC,
            ErrorCode::OutOfMemory => t::RESP_ERR_OUT_OF_MEMORY,
            ErrorCode::InvalidScanoutId => t::RESP_ERR_INVALID_SCANOUT_ID,
            ErrorCode::InvalidResourceId => t::RESP_ERR_INVALID_RESOURCE_ID,
            ErrorCode::InvalidContextId => t::RESP_ERR_INVALID_CONTEXT_ID,
            ErrorCode::InvalidParameter => t::RESP_ERR_INVALID_PARAMETER,
        }
    }

    /// The error for a response type code, if it is one.
    pub fn from_type_code(code: u32) -> Option<ErrorCode> {
        Some(match code {
            t::RESP_ERR_UNSPEC => ErrorCode::Unspec,
            t::RESP_ERR_OUT_OF_MEMORY => ErrorCode::OutOfMemory,
            t::RESP_ERR_INVALID_SCANOUT_ID => ErrorCode::InvalidScanoutId,
            t::RESP_ERR_INVALID_RESOURCE_ID => ErrorCode::InvalidResourceId,
            t::RESP_ERR_INVALID_CONTEXT_ID => ErrorCode::InvalidContextId,
            t::RESP_ERR_INVALID_PARAMETER => ErrorCode::InvalidParameter,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorCode::Unspec => "ERR_UNSPEC",
            ErrorCode::OutOfMemory => "ERR_OUT_OF_MEMORY",
            ErrorCode::InvalidScanoutId => "ERR_INVALID_SCANOUT_ID",
            ErrorCode::InvalidResourceId => "ERR_INVALID_RESOURCE_ID",
            ErrorCode::InvalidContextId => "ERR_INVALID_CONTEXT_ID",
            ErrorCode::InvalidParameter => "ERR_INVALID_PARAMETER",
        };
        f.write_str(name)
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OkNoData,
    OkDisplayInfo(Box<[DisplayOne; MAX_SCANOUTS]>),
    OkEdid(Box<[u8; EDID_BLOB_SIZE]>, u32),
    OkCapsetInfo {
        capset_id: u32,
        max_version: u32,
        max_size: u32,
    },
    OkCapset(Vec<u8>),
    OkResourceUuid([u8; 16]),
    OkMapInfo(u32),
    Err(ErrorCode),
}

impl From<ErrorCode> for Response {
    fn from(code: ErrorCode) -> Self {
        Response::Err(code)
    }
}

impl Response {
    /// The response type code.
    pub fn type_code(&self) -> u32 {
        match self {
            Response::OkNoData => t::RESP_OK_NODATA,
            Response::OkDisplayInfo(_) => t::RESP_OK_DISPLAY_INFO,
            Response::OkEdid(..) => t::RESP_OK_EDID,
            Response::OkCapsetInfo { .. } => t::RESP_OK_CAPSET_INFO,
            Response::OkCapset(_) => t::RESP_OK_CAPSET,
            Response::OkResourceUuid(_) => t::RESP_OK_RESOURCE_UUID,
            Response::OkMapInfo(_) => t::RESP_OK_MAP_INFO,
            Response::Err(code) => code.type_code(),
        }
    }

    /// The response header for request header `req`: fence id, context and
    /// ring are echoed when the request asked for a fence, as the spec
    /// requires for the driver to match completions.
    pub fn header_for(&self, req: &CtrlHeader) -> CtrlHeader {
        let mut hdr = CtrlHeader {
            type_: self.type_code(),
            ..Default::default()
        };
        if req.flags & flags::FENCE != 0 {
            hdr.flags = req.flags & (flags::FENCE | flags::INFO_RING_IDX);
            hdr.fence_id = req.fence_id;
            hdr.ctx_id = req.ctx_id;
            hdr.ring_idx = req.ring_idx;
        }
        hdr
    }

    /// Encodes the response to request `req` into `out` (cleared first).
    pub fn encode(&self, req: &CtrlHeader, out: &mut Vec<u8>) {
        let hdr = self.header_for(req);
        out.clear();
        match self {
            Response::OkNoData | Response::Err(_) => out.extend_from_slice(hdr.as_slice()),
            Response::OkDisplayInfo(pmodes) => {
                let resp = RespDisplayInfo {
                    hdr,
                    pmodes: **pmodes,
                };
                out.extend_from_slice(resp.as_slice());
            }
            Response::OkEdid(blob, size) => {
                let resp = RespEdid {
                    hdr,
                    size: *size,
                    padding: 0,
                    edid: **blob,
                };
                out.extend_from_slice(resp.as_slice());
            }
            Response::OkCapsetInfo {
                capset_id,
                max_version,
                max_size,
            } => {
                let resp = RespCapsetInfo {
                    hdr,
                    capset_id: *capset_id,
                    capset_max_version: *max_version,
                    capset_max_size: *max_size,
                    padding: 0,
                };
                out.extend_from_slice(resp.as_slice());
            }
            Response::OkCapset(data) => {
                out.extend_from_slice(hdr.as_slice());
                out.extend_from_slice(data);
            }
            Response::OkResourceUuid(uuid) => {
                let resp = RespResourceUuid { hdr, uuid: *uuid };
                out.extend_from_slice(resp.as_slice());
            }
            Response::OkMapInfo(map_info) => {
                out.extend_from_slice(hdr.as_slice());
                out.extend_from_slice(&map_info.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_request_echoes_fence_and_ring() {
        let req = CtrlHeader {
            type_: t::RESOURCE_FLUSH,
            flags: flags::FENCE | flags::INFO_RING_IDX,
            fence_id: 42,
            ctx_id: 3,
            ring_idx: 2,
            padding: [0; 3],
        };
        let mut out = Vec::new();
        Response::OkNoData.encode(&req, &mut out);
        let mut hdr = CtrlHeader::default();
        hdr.as_mut_slice().copy_from_slice(&out);
        assert_eq!(hdr.type_, t::RESP_OK_NODATA);
        assert_eq!(hdr.flags, flags::FENCE | flags::INFO_RING_IDX);
        assert_eq!((hdr.fence_id, hdr.ctx_id, hdr.ring_idx), (42, 3, 2));
        // An error response carries the fence too.
        let hdr = Response::Err(ErrorCode::InvalidResourceId).header_for(&req);
        assert_eq!(hdr.type_, t::RESP_ERR_INVALID_RESOURCE_ID);
        assert_eq!(hdr.flags, flags::FENCE | flags::INFO_RING_IDX);
        assert_eq!((hdr.fence_id, hdr.ctx_id, hdr.ring_idx), (42, 3, 2));
    }

    #[test]
    fn unfenced_request_gets_a_clean_header() {
        // Without FENCE nothing is echoed, whatever else the header holds.
        let req = CtrlHeader {
            type_: t::RESOURCE_FLUSH,
            flags: flags::INFO_RING_IDX,
            fence_id: 42,
            ctx_id: 3,
            ring_idx: 2,
            ..Default::default()
        };
        for resp in [
            Response::OkNoData,
            Response::Err(ErrorCode::InvalidResourceId),
        ] {
            let hdr = resp.header_for(&req);
            assert_eq!(hdr.type_, resp.type_code());
            assert_eq!(
                (hdr.flags, hdr.fence_id, hdr.ctx_id, hdr.ring_idx),
                (0, 0, 0, 0)
            );
        }
    }

    #[test]
    fn encoded_sizes_match_the_spec() {
        let req = CtrlHeader::default();
        let mut out = Vec::new();
        Response::OkDisplayInfo(Default::default()).encode(&req, &mut out);
        assert_eq!(out.len(), 408);
        Response::OkEdid(Box::new([0; EDID_BLOB_SIZE]), 128).encode(&req, &mut out);
        assert_eq!(out.len(), 1056);
        Response::OkResourceUuid([1; 16]).encode(&req, &mut out);
        assert_eq!(out.len(), 40);
        Response::OkMapInfo(2).encode(&req, &mut out);
        assert_eq!(out.len(), 32);
    }

    #[test]
    fn error_codes_round_trip() {
        for code in [
            ErrorCode::Unspec,
            ErrorCode::OutOfMemory,
            ErrorCode::InvalidScanoutId,
            ErrorCode::InvalidResourceId,
            ErrorCode::InvalidContextId,
            ErrorCode::InvalidParameter,
        ] {
            assert_eq!(ErrorCode::from_type_code(code.type_code()), Some(code));
        }
    }
}
