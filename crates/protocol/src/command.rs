//! Validated decoding of control and cursor queue requests.

use std::mem::size_of;

use vm_memory::ByteValued;

use crate::ctrl_type as t;
use crate::wire::*;

/// Why a request could not be decoded. Each maps to an error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {have} bytes is shorter than the {need} its type needs")]
    Short { need: usize, have: usize },
    #[error("unknown request type {0:#x}")]
    UnknownType(u32),
    #[error("nr_entries {nr_entries} exceeds the limit of {max}")]
    TooManyEntries { nr_entries: u32, max: u32 },
    #[error("request type {0:#x} is not valid on this queue")]
    WrongQueue(u32),
}

/// One guest-physical extent of a backing: a `virtio_gpu_mem_entry` as
/// decoded (its padding dropped). The form a backing is stored in, from
/// the decoder to the device's resource table, never copied in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExtent {
    pub addr: u64,
    pub len: u32,
}

impl GuestExtent {
    /// One past the last byte (saturating: an extent that wraps the
    /// address space is refused by the device before its end matters).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(u64::from(self.len))
    }
}

impl From<MemEntry> for GuestExtent {
    fn from(e: MemEntry) -> Self {
        GuestExtent {
            addr: e.addr,
            len: e.length,
        }
    }
}

/// A decoded request: its header and typed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub hdr: CtrlHeader,
    pub cmd: Command,
}

/// Every request gpuswap understands, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    GetDisplayInfo,
    GetEdid(GetEdid),
    ResourceCreate2d(ResourceCreate2d),
    ResourceUnref(ResourceId),
    SetScanout(SetScanout),
    ResourceFlush(ResourceFlush),
    TransferToHost2d(TransferToHost2d),
    ResourceAttachBacking {
        resource_id: u32,
        entries: Vec<GuestExtent>,
    },
    ResourceDetachBacking(ResourceId),
    GetCapsetInfo(GetCapsetInfo),
    GetCapset(GetCapset),
    ResourceAssignUuid(ResourceId),
    ResourceCreateBlob {
        args: ResourceCreateBlob,
        entries: Vec<GuestExtent>,
    },
    SetScanoutBlob(SetScanoutBlob),
    ResourceMapBlob(ResourceMapBlob),
    ResourceUnmapBlob(ResourceId),
    /// A 3D (context) command. Decoded only far enough to answer it: no 3D
    /// renderer is available, so it always gets an error response.
    Context3d {
        type_: u32,
    },
    UpdateCursor(UpdateCursor),
    MoveCursor(UpdateCursor),
}

impl Command {
    /// The request type code this command was decoded from.
    pub fn type_code(&self) -> u32 {
        match self {
            Command::GetDisplayInfo => t::GET_DISPLAY_INFO,
            Command::GetEdid(_) => t::GET_EDID,
            Command::ResourceCreate2d(_) => t::RESOURCE_CREATE_2D,
            Command::ResourceUnref(_) => t::RESOURCE_UNREF,
            Command::SetScanout(_) => t::SET_SCANOUT,
            Command::ResourceFlush(_) => t::RESOURCE_FLUSH,
            Command::TransferToHost2d(_) => t::TRANSFER_TO_HOST_2D,
            Command::ResourceAttachBacking { .. } => t::RESOURCE_ATTACH_BACKING,
            Command::ResourceDetachBacking(_) => t::RESOURCE_DETACH_BACKING,
            Command::GetCapsetInfo(_) => t::GET_CAPSET_INFO,
            Command::GetCapset(_) => t::GET_CAPSET,
            Command::ResourceAssignUuid(_) => t::RESOURCE_ASSIGN_UUID,
            Command::ResourceCreateBlob { .. } => t::RESOURCE_CREATE_BLOB,
            Command::SetScanoutBlob(_) => t::SET_SCANOUT_BLOB,
            Command::ResourceMapBlob(_) => t::RESOURCE_MAP_BLOB,
            Command::ResourceUnmapBlob(_) => t::RESOURCE_UNMAP_BLOB,
            Command::Context3d { type_ } => *type_,
            Command::UpdateCursor(_) => t::UPDATE_CURSOR,
            Command::MoveCursor(_) => t::MOVE_CURSOR,
        }
    }

    /// Whether this is a cursor-queue command.
    pub fn is_cursor(&self) -> bool {
        matches!(self, Command::UpdateCursor(_) | Command::MoveCursor(_))
    }
}

/// Reads a `T` from the front of `bytes`, advancing it. `consumed` is how
/// many bytes of the request came before, for the error message.
fn take<T: ByteValued + Default>(bytes: &mut &[u8], consumed: usize) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            need: consumed + need,
            have: consumed + bytes.len(),
        });
    }
    let (head, rest) = bytes.split_at(need);
    *bytes = rest;
    // Copy rather than cast: the request buffer has no alignment guarantee.
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(head);
    Ok(value)
}

/// Reads `nr_entries` memory entries, after checking the count against
/// `max_entries` so a hostile count cannot make us allocate.
fn take_entries(
    bytes: &mut &[u8],
    consumed: usize,
    nr_entries: u32,
    max_entries: u32,
) -> Result<Vec<GuestExtent>, DecodeError> {
    if nr_entries > max_entries {
        return Err(DecodeError::TooManyEntries {
            nr_entries,
            max: max_entries,
        });
    }
    let count = nr_entries as usize;
    let need = count * size_of::<MemEntry>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            need: consumed + need,
            have: consumed + bytes.len(),
        });
    }
    // One pass, no zero-filling first: attaches can carry 10^5 entries.
    let entries = bytes[..need]
        .chunks_exact(size_of::<MemEntry>())
        .map(|chunk| {
            let mut entry = MemEntry::default();
            entry.as_mut_slice().copy_from_slice(chunk);
            GuestExtent::from(entry)
        })
        .collect();
    *bytes = &bytes[need..];
    Ok(entries)
}

impl Request {
    /// Decodes one control-queue request. `max_entries` bounds
    /// `nr_entries` of ATTACH_BACKING and CREATE_BLOB.
    ///
    /// On error the header is still returned when it could be read, so the
    /// caller can answer with a matching error response.
    pub fn decode_ctrl(
        bytes: &[u8],
        max_entries: u32,
    ) -> Result<Request, (Option<CtrlHeader>, DecodeError)> {
        Self::decode(bytes, max_entries, false)
    }

    /// Decodes one cursor-queue request.
    pub fn decode_cursor(bytes: &[u8]) -> Result<Request, (Option<CtrlHeader>, DecodeError)> {
        Self::decode(bytes, 0, true)
    }

    fn decode(
        bytes: &[u8],
        max_entries: u32,
        cursor_queue: bool,
    ) -> Result<Request, (Option<CtrlHeader>, DecodeError)> {
        let mut rest = bytes;
        let hdr: CtrlHeader = take(&mut rest, 0).map_err(|e| (None, e))?;
        let at = size_of::<CtrlHeader>();
        let cmd =
            Self::decode_body(&hdr, &mut rest, at, max_entries).map_err(|e| (Some(hdr), e))?;
        if cmd.is_cursor() != cursor_queue {
            return Err((Some(hdr), DecodeError::WrongQueue(hdr.type_)));
        }
        Ok(Request { hdr, cmd })
    }

    fn decode_body(
        hdr: &CtrlHeader,
        rest: &mut &[u8],
        at: usize,
        max_entries: u32,
    ) -> Result<Command, DecodeError> {
        let cmd = match hdr.type_ {
            t::GET_DISPLAY_INFO => Command::GetDisplayInfo,
            t::GET_EDID => Command::GetEdid(take(rest, at)?),
            t::RESOURCE_CREATE_2D => Command::ResourceCreate2d(take(rest, at)?),
            t::RESOURCE_UNREF => Command::ResourceUnref(take(rest, at)?),
            t::SET_SCANOUT => Command::SetScanout(take(rest, at)?),
            t::RESOURCE_FLUSH => Command::ResourceFlush(take(rest, at)?),
            t::TRANSFER_TO_HOST_2D => Command::TransferToHost2d(take(rest, at)?),
            t::RESOURCE_ATTACH_BACKING => {
                let args: ResourceAttachBacking = take(rest, at)?;
                let at = at + size_of::<ResourceAttachBacking>();
                Command::ResourceAttachBacking {
                    resource_id: args.resource_id,
                    entries: take_entries(rest, at, args.nr_entries, max_entries)?,
                }
            }
            t::RESOURCE_DETACH_BACKING => Command::ResourceDetachBacking(take(rest, at)?),
            t::GET_CAPSET_INFO => Command::GetCapsetInfo(take(rest, at)?),
            t::GET_CAPSET => Command::GetCapset(take(rest, at)?),
            t::RESOURCE_ASSIGN_UUID => Command::ResourceAssignUuid(take(rest, at)?),
            t::RESOURCE_CREATE_BLOB => {
                let args: ResourceCreateBlob = take(rest, at)?;
                let at = at + size_of::<ResourceCreateBlob>();
                Command::ResourceCreateBlob {
                    args,
                    entries: take_entries(rest, at, args.nr_entries, max_entries)?,
                }
            }
            t::SET_SCANOUT_BLOB => Command::SetScanoutBlob(take(rest, at)?),
            t::RESOURCE_MAP_BLOB => Command::ResourceMapBlob(take(rest, at)?),
            t::RESOURCE_UNMAP_BLOB => Command::ResourceUnmapBlob(take(rest, at)?),
            t::CTX_CREATE..=t::SUBMIT_3D => Command::Context3d { type_: hdr.type_ },
            t::UPDATE_CURSOR => Command::UpdateCursor(take(rest, at)?),
            t::MOVE_CURSOR => Command::MoveCursor(take(rest, at)?),
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(type_: u32, body: &[u8]) -> Vec<u8> {
        let hdr = CtrlHeader {
            type_,
            flags: crate::flags::FENCE,
            fence_id: 7,
            ..Default::default()
        };
        let mut bytes = hdr.as_slice().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn decodes_create_2d() {
        let body = ResourceCreate2d {
            resource_id: 3,
            format: crate::format::B8G8R8X8_UNORM,
            width: 64,
            height: 32,
        };
        let req = Request::decode_ctrl(&request(t::RESOURCE_CREATE_2D, body.as_slice()), 16)
            .expect("valid request");
        assert_eq!(req.hdr.fence_id, 7);
        assert_eq!(req.cmd, Command::ResourceCreate2d(body));
    }

    #[test]
    fn decodes_attach_backing_entries() {
        let mut body = ResourceAttachBacking {
            resource_id: 9,
            nr_entries: 2,
        }
        .as_slice()
        .to_vec();
        let entries = [
            MemEntry {
                addr: 0x1000,
                length: 4096,
                padding: 0,
            },
            MemEntry {
                addr: 0xffff_0000_0000,
                length: 8192,
                padding: 0,
            },
        ];
        for e in &entries {
            body.extend_from_slice(e.as_slice());
        }
        let req = Request::decode_ctrl(&request(t::RESOURCE_ATTACH_BACKING, &body), 16).unwrap();
        assert_eq!(
            req.cmd,
            Command::ResourceAttachBacking {
                resource_id: 9,
                entries: entries.iter().copied().map(GuestExtent::from).collect()
            }
        );
    }

    #[test]
    fn huge_nr_entries_is_refused_before_reading_them() {
        let body = ResourceAttachBacking {
            resource_id: 1,
            nr_entries: u32::MAX,
        };
        let err = Request::decode_ctrl(&request(t::RESOURCE_ATTACH_BACKING, body.as_slice()), 1024)
            .unwrap_err();
        assert_eq!(
            err.1,
            DecodeError::TooManyEntries {
                nr_entries: u32::MAX,
                max: 1024
            }
        );
        assert!(err.0.is_some(), "header is returned for the error response");
    }

    #[test]
    fn short_entries_are_refused() {
        let body = ResourceAttachBacking {
            resource_id: 1,
            nr_entries: 4,
        };
        let err = Request::decode_ctrl(&request(t::RESOURCE_ATTACH_BACKING, body.as_slice()), 16)
            .unwrap_err();
        assert!(matches!(err.1, DecodeError::Short { .. }));
    }

    #[test]
    fn short_header_and_body() {
        assert!(matches!(
            Request::decode_ctrl(&[0u8; 10], 16),
            Err((None, DecodeError::Short { need: 24, have: 10 }))
        ));
        let bytes = request(t::TRANSFER_TO_HOST_2D, &[0u8; 31]);
        assert!(matches!(
            Request::decode_ctrl(&bytes, 16),
            Err((Some(_), DecodeError::Short { need: 56, have: 55 }))
        ));
    }

    #[test]
    fn unknown_type_and_wrong_queue() {
        let (_, err) = Request::decode_ctrl(&request(0x0abc, &[]), 16).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType(0x0abc));
        let cursor = request(t::MOVE_CURSOR, UpdateCursor::default().as_slice());
        let (_, err) = Request::decode_ctrl(&cursor, 16).unwrap_err();
        assert_eq!(err, DecodeError::WrongQueue(t::MOVE_CURSOR));
        assert!(Request::decode_cursor(&cursor).is_ok());
        let (_, err) = Request::decode_cursor(&request(t::GET_DISPLAY_INFO, &[])).unwrap_err();
        assert_eq!(err, DecodeError::WrongQueue(t::GET_DISPLAY_INFO));
    }

    #[test]
    fn context_commands_decode_as_3d() {
        let req = Request::decode_ctrl(&request(t::SUBMIT_3D, &[0; 8]), 16).unwrap();
        assert_eq!(
            req.cmd,
            Command::Context3d {
                type_: t::SUBMIT_3D
            }
        );
    }

    #[test]
    fn names_round_trip() {
        for code in [
            t::GET_DISPLAY_INFO,
            t::RESOURCE_ATTACH_BACKING,
            t::SET_SCANOUT_BLOB,
            t::SUBMIT_3D,
            t::MOVE_CURSOR,
        ] {
            assert_eq!(t::from_name(t::name(code)), Some(code));
        }
        assert_eq!(t::from_name("nonsense"), None);
    }
}
