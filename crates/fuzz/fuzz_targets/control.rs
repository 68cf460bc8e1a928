//! Control-socket request lines: `control::parse`, then `control::handle`
//! (except `subscribe`, which takes over the connection), against a
//! backend holding a few resources so that `resources` and `trace` have
//! something to show.
//!
//! Input: request lines separated by newlines, handled in order on one
//! backend (so a `fault` request changes what later ones report).
//! Checked: no panic, and every reply (parse error or handled request) is
//! a JSON object with a boolean "ok".

#![no_main]

use gpuswap_daemon::backend::VhostUserGpuBackend;
use gpuswap_daemon::control;
use gpuswap_device::DeviceConfig;
use gpuswap_fuzz::{guest_memory, request_bytes, MIB};
use gpuswap_protocol::ctrl_type as t;
use gpuswap_protocol::wire::{ResourceCreate2d, ResourceCreateBlob};
use gpuswap_protocol::{blob_mem, format, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vm_memory::ByteValued;

/// A backend with a 2D resource attached, a 2D resource detached and an
/// attached guest blob.
fn backend() -> VhostUserGpuBackend {
    let config = DeviceConfig {
        max_host_memory: 16 * MIB,
        trace_capacity: 64,
        ..DeviceConfig::default()
    };
    let backend = VhostUserGpuBackend::new(config).expect("backend");
    let mut device = backend.device();
    device.set_memory(guest_memory(0));
    let create_2d = |id| ResourceCreate2d {
        resource_id: id,
        format: format::B8G8R8X8_UNORM,
        width: 16,
        height: 16,
    };
    let attach = |id: u32, addr: u64| {
        let mut body = id.to_le_bytes().to_vec();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&4096u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        request_bytes(t::RESOURCE_ATTACH_BACKING, &body)
    };
    let blob = ResourceCreateBlob {
        resource_id: 3,
        blob_mem: blob_mem::GUEST,
        blob_flags: 0,
        nr_entries: 0,
        blob_id: 0,
        size: 4096,
    };
    for bytes in [
        request_bytes(t::RESOURCE_CREATE_2D, create_2d(1).as_slice()),
        attach(1, 0x1000),
        request_bytes(t::RESOURCE_CREATE_2D, create_2d(2).as_slice()),
        request_bytes(t::RESOURCE_CREATE_BLOB, blob.as_slice()),
        attach(3, 6 * MIB),
    ] {
        let req = Request::decode_ctrl(&bytes, 16).expect("set-up request decodes");
        let name = t::name(req.cmd.type_code());
        assert_eq!(device.process(req), Response::OkNoData, "{name}");
    }
    drop(device);
    backend
}

fn check_reply(line: &str, reply: &Value) {
    let ok = reply.as_object().and_then(|o| o.get("ok"));
    assert!(
        matches!(ok, Some(Value::Bool(_))),
        "reply to {line:?} has no boolean \"ok\": {reply}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let backend = backend();
    let handle = backend.control_handle();
    for line in text.split('\n') {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match control::parse(line) {
            Ok(control::Request::Subscribe) => continue,
            Ok(request) => control::handle(request, &handle),
            Err(reply) => reply,
        };
        check_reply(line, &reply);
        // What the socket sends: one line of JSON.
        let sent = reply.to_string();
        assert!(!sent.contains('\n'), "reply to {line:?} spans lines");
    }
});
