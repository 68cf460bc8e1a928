//! Protocol violations over the real socket: each is answered with its
//! documented error code, changes nothing, and shows in the trace and the
//! counters.

mod common;

use common::*;
use gpuswap_frontend::{commands, Error, FrontendConfig, GpuFrontend, Placement, QueueId};
use gpuswap_protocol::wire::{CursorPos, MemEntry, UpdateCursor};
use gpuswap_protocol::{ctrl_type, format, ErrorCode};
use serde_json::{json, Value};
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;

fn code(r: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match r {
        Err(e) => e
            .device_error()
            .unwrap_or_else(|| panic!("not an error response: {e}")),
        Ok(v) => panic!("expected an error response, got {v:?}"),
    }
}

/// UPDATE_CURSOR with a response buffer, so the error can be seen.
fn update_cursor(gpu: &mut GpuFrontend, id: u32) -> Result<(), Error> {
    let body = UpdateCursor {
        pos: CursorPos::default(),
        resource_id: id,
        ..Default::default()
    };
    let req = commands::encode_request(
        &commands::request_header(ctrl_type::UPDATE_CURSOR, None),
        body.as_slice(),
        &[],
    );
    let resp = gpu.submit(QueueId::Cursor, &req, 24)?;
    commands::check_response(&resp, ctrl_type::RESP_OK_NODATA, None).map(|_| ())
}

#[test]
fn violations_are_refused_recorded_and_change_nothing() {
    let mut d = Daemon::spawn("violations", &[]);
    let mut gpu = d.connect(FrontendConfig::default());
    let mut ctl = d.ctl();

    // 1: attached and transferred; 2: never attached; 4: a detached cursor.
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let a = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.ram()
        .write_entries(&a.entries(), 0, &pattern(4096, 1))
        .unwrap();
    gpu.attach_backing(1, &a.entries()).unwrap();
    gpu.transfer_to_host_2d(1, rect(0, 0, 16, 16), 0).unwrap();
    gpu.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap();
    gpu.resource_create_2d(2, FMT, 16, 16).unwrap();
    gpu.resource_create_2d(4, FMT, 64, 64).unwrap();
    let other = gpu.ram_mut().alloc(4, Placement::Scattered).unwrap();

    let before = ctl.resources();
    let v0 = ctl.counters()["counters"]["violations"].as_u64().unwrap();
    let seq0 = ctl.last_seq();
    let full = rect(0, 0, 16, 16);
    // (result, expected code, resource, violation, command)
    let cases: Vec<(ErrorCode, ErrorCode, u32, &str, &str)> = vec![
        (
            code(gpu.attach_backing(1, &other.entries())),
            ErrorCode::Unspec,
            1,
            "double_attach",
            "resource_attach_backing",
        ),
        (
            code(gpu.detach_backing(2)),
            ErrorCode::Unspec,
            2,
            "double_detach",
            "resource_detach_backing",
        ),
        (
            code(gpu.transfer_to_host_2d(2, full, 0)),
            ErrorCode::Unspec,
            2,
            "use_while_detached",
            "transfer_to_host_2d",
        ),
        (
            code(gpu.resource_flush(2, full)),
            ErrorCode::Unspec,
            2,
            "use_while_detached",
            "resource_flush",
        ),
        (
            code(gpu.set_scanout(0, 2, full)),
            ErrorCode::Unspec,
            2,
            "use_while_detached",
            "set_scanout",
        ),
        (
            code(update_cursor(&mut gpu, 4)),
            ErrorCode::Unspec,
            4,
            "use_while_detached",
            "update_cursor",
        ),
        (
            code(gpu.transfer_to_host_2d(99, full, 0)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "transfer_to_host_2d",
        ),
        (
            code(gpu.attach_backing(99, &other.entries())),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "resource_attach_backing",
        ),
        (
            code(gpu.detach_backing(99)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "resource_detach_backing",
        ),
        (
            code(gpu.resource_flush(99, full)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "resource_flush",
        ),
        (
            code(gpu.set_scanout(0, 99, full)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "set_scanout",
        ),
        (
            code(gpu.resource_unref(99)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "resource_unref",
        ),
        (
            code(gpu.resource_assign_uuid(99)),
            ErrorCode::InvalidResourceId,
            99,
            "unknown_resource",
            "resource_assign_uuid",
        ),
        (
            code(gpu.resource_create_2d(1, FMT, 8, 8)),
            ErrorCode::InvalidResourceId,
            1,
            "duplicate_resource",
            "resource_create_2d",
        ),
    ];
    for (i, (got, want, ..)) in cases.iter().enumerate() {
        assert_eq!(got, want, "case {i}: {:?}", cases[i]);
    }
    assert_eq!(ctl.resources(), before, "a refused request changed state");
    // The scanout still shows resource 1.
    assert_eq!(ctl.live(1)["scanouts"], json!([0]));

    let events = ctl.trace(seq0, None);
    assert!(
        events.iter().all(|e| e["event"] == "violation"),
        "refused requests record only violations: {events:?}"
    );
    let seen: Vec<(u32, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["resource_id"].as_u64().unwrap() as u32,
                e["violation"].as_str().unwrap().to_string(),
                e["command"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u32, String, String)> = cases
        .iter()
        .map(|(_, _, id, v, c)| (*id, v.to_string(), c.to_string()))
        .collect();
    assert_eq!(seen, want);
    let v1 = ctl.counters()["counters"]["violations"].as_u64().unwrap();
    assert_eq!(v1 - v0, cases.len() as u64);
    d.assert_alive();
}

#[test]
fn overlapping_backing_is_recorded_and_eviction_releases_pages() {
    let d = Daemon::spawn("overlap", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 32, 32).unwrap();
    gpu.resource_create_2d(2, FMT, 32, 32).unwrap();
    let a = gpu.ram_mut().alloc(2, Placement::Contiguous).unwrap();
    gpu.attach_backing(1, &a.entries()).unwrap();
    let one = ctl.live(1);
    let v0 = ctl.counters()["counters"]["violations"].as_u64().unwrap();
    let seq0 = ctl.last_seq();

    // Shares one page with resource 1, at a byte offset inside it. The
    // device records it (the guest freed pages still attached) but, by
    // design, does not refuse the attach: see GpuDevice::attach.
    let shared = [MemEntry {
        addr: a.addrs()[1] + 2048,
        length: 4096,
        padding: 0,
    }];
    gpu.attach_backing(2, &shared).unwrap();
    let events = ctl.trace(seq0, None);
    let v: Vec<&Value> = events_of(&events, "violation");
    assert_eq!(v.len(), 1, "{events:?}");
    assert_eq!(
        (
            v[0]["resource_id"].clone(),
            v[0]["violation"].clone(),
            v[0]["other"].clone()
        ),
        (json!(2), json!("overlapping_backing"), json!(1))
    );
    assert_eq!(v[0]["command"], "resource_attach_backing");
    assert_eq!(
        ctl.counters()["counters"]["violations"].as_u64().unwrap(),
        v0 + 1
    );
    // Resource 1 is untouched by it.
    assert_eq!(ctl.live(1), one);

    // Once 1 is evicted its pages are free: reusing them is no violation.
    gpu.detach_backing(2).unwrap();
    gpu.detach_backing(1).unwrap();
    let seq1 = ctl.last_seq();
    gpu.attach_backing(2, &a.entries()).unwrap();
    assert!(events_of(&ctl.trace(seq1, None), "violation").is_empty());
    // ... until 1 comes back onto them.
    gpu.attach_backing(1, &a.entries()[..1]).unwrap();
    let events = ctl.trace(seq1, None);
    let v = events_of(&events, "violation");
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0]["resource_id"].clone(), v[0]["other"].clone()),
        (json!(1), json!(2))
    );
}
