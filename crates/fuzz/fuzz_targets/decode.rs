//! Request decoding for both queues, on arbitrary bytes.
//!
//! Input: 4 bytes of `max_entries` (little endian; kept below 2^16 so
//! that entry lists of every length up to the limit are reachable), then
//! the request bytes. Checks, beyond "no panic":
//! - a decoded request has at most `max_entries` entries, its command's
//!   type code is its header's type, and it is on the queue it was
//!   decoded for;
//! - re-encoding the decoded request gives exactly the bytes it was read
//!   from (a prefix of the input: decoding ignores what follows);
//! - errors describe the input: a header comes back iff the input holds
//!   one, `Short` reports the input's real length and a need above it,
//!   `TooManyEntries` a count above the limit;
//! - the request type's name maps back to its code, and an error
//!   response encodes to exactly a header.

#![no_main]

use gpuswap_fuzz::encode_request;
use gpuswap_protocol::wire::{CtrlHeader, MemEntry};
use gpuswap_protocol::{ctrl_type, Command, DecodeError, ErrorCode, Request, Response};
use libfuzzer_sys::fuzz_target;

const HDR: usize = size_of::<CtrlHeader>();
/// A `virtio_gpu_mem_entry`, and where its padding starts.
const ENTRY: usize = size_of::<MemEntry>();
const ENTRY_PADDING: usize = 12;

fn entry_count(cmd: &Command) -> Option<usize> {
    match cmd {
        Command::ResourceAttachBacking { entries, .. }
        | Command::ResourceCreateBlob { entries, .. } => Some(entries.len()),
        _ => None,
    }
}

fn check(
    bytes: &[u8],
    max_entries: u32,
    cursor_queue: bool,
    decoded: Result<Request, (Option<CtrlHeader>, DecodeError)>,
) {
    match decoded {
        Ok(req) => {
            assert_eq!(req.cmd.type_code(), req.hdr.type_);
            assert_eq!(req.cmd.is_cursor(), cursor_queue);
            if let Some(n) = entry_count(&req.cmd) {
                assert!(
                    n as u64 <= u64::from(max_entries),
                    "{n} entries > {max_entries}"
                );
            }
            let encoded = encode_request(&req);
            // The entries end the encoding; only their padding may differ.
            let entries_at = encoded.len() - entry_count(&req.cmd).unwrap_or(0) * ENTRY;
            let same = |i: usize| {
                bytes.get(i) == encoded.get(i)
                    || (i >= entries_at && (i - entries_at) % ENTRY >= ENTRY_PADDING)
            };
            assert!(
                bytes.len() >= encoded.len() && (0..encoded.len()).all(same),
                "re-encoded {:?} is not the prefix it was decoded from",
                req.cmd
            );
            // Every type that decodes has a name, and it maps back.
            let name = ctrl_type::name(req.hdr.type_);
            assert_eq!(ctrl_type::from_name(name), Some(req.hdr.type_), "{name}");
        }
        Err((hdr, err)) => {
            assert_eq!(hdr.is_some(), bytes.len() >= HDR, "{err}");
            match err {
                DecodeError::Short { need, have } => {
                    assert_eq!(have, bytes.len());
                    assert!(need > have);
                }
                DecodeError::TooManyEntries { nr_entries, max } => {
                    assert_eq!(max, if cursor_queue { 0 } else { max_entries });
                    assert!(nr_entries > max);
                }
                DecodeError::UnknownType(t) | DecodeError::WrongQueue(t) => {
                    assert_eq!(Some(t), hdr.map(|h| h.type_));
                }
            }
            let hdr = hdr.unwrap_or_default();
            let mut out = Vec::new();
            Response::Err(ErrorCode::Unspec).encode(&hdr, &mut out);
            assert_eq!(out.len(), HDR);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (limit, bytes) = data.split_at(4);
    let max_entries = u32::from_le_bytes(limit.try_into().unwrap()) & 0xffff;
    check(
        bytes,
        max_entries,
        false,
        Request::decode_ctrl(bytes, max_entries),
    );
    check(bytes, 0, true, Request::decode_cursor(bytes));
});
