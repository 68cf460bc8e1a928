//! Protocol violations over the real socket that the model test
//! (`state_machine_model.rs`, which checks the answers, the trace and the
//! counter for every violation of the backing state machine) does not
//! send: each is answered with its documented error code, changes nothing,
//! and shows in the trace and the counters. The rules themselves are the
//! device's (`crates/device/tests/state_machine.rs`).

mod common;

use common::*;
use gpuswap_api::control::{EventKind, Violation};
use gpuswap_frontend::{commands, Error, FrontendConfig, GpuFrontend, QueueId};
use gpuswap_protocol::wire::{CursorPos, UpdateCursor};
use gpuswap_protocol::{ctrl_type, format, ErrorCode};
use gpuswap_testkit::pattern;
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;

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

/// The cursor queue's requests and RESOURCE_ASSIGN_UUID, which the model
/// test does not send: refused, recorded with their command, and nothing
/// changed.
#[test]
fn cursor_and_uuid_violations_are_refused_recorded_and_change_nothing() {
    let mut d = Daemon::spawn("violations", &[]);
    let mut gpu = d.connect(FrontendConfig::default());
    let mut ctl = d.ctl();

    // 1: attached and shown; 4: a detached cursor.
    upload_2d(&mut gpu, 1, (16, 16), &pattern(16 * 16 * 4, 1));
    gpu.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap();
    gpu.resource_create_2d(4, FMT, 64, 64).unwrap();

    let before = ctl.resources().unwrap();
    let v0 = ctl.counters().unwrap().counters.violations;
    let seq0 = ctl.last_seq();
    // (result, expected code, resource, violation, command)
    let cases: Vec<(ErrorCode, ErrorCode, u32, Violation, &str)> = vec![
        (
            code(update_cursor(&mut gpu, 4)),
            ErrorCode::Unspec,
            4,
            Violation::UseWhileDetached,
            "update_cursor",
        ),
        (
            code(update_cursor(&mut gpu, 99)),
            ErrorCode::InvalidResourceId,
            99,
            Violation::UnknownResource,
            "update_cursor",
        ),
        (
            code(gpu.resource_assign_uuid(99)),
            ErrorCode::InvalidResourceId,
            99,
            Violation::UnknownResource,
            "resource_assign_uuid",
        ),
    ];
    for (i, (got, want, ..)) in cases.iter().enumerate() {
        assert_eq!(got, want, "case {i}: {:?}", cases[i]);
    }
    assert_eq!(
        ctl.resources().unwrap(),
        before,
        "a refused request changed state"
    );
    assert_eq!(ctl.live(1).scanouts, [0]);

    let events = ctl.trace(seq0, None).unwrap();
    let seen: Vec<(u32, EventKind)> = events
        .iter()
        .map(|e| (e.resource_id, e.kind.clone()))
        .collect();
    let want: Vec<(u32, EventKind)> = cases
        .iter()
        .map(|&(_, _, id, violation, command)| {
            let command = command.to_string();
            (id, EventKind::Violation { violation, command })
        })
        .collect();
    assert_eq!(seen, want, "refused requests record only their violations");
    let v1 = ctl.counters().unwrap().counters.violations;
    assert_eq!(v1 - v0, cases.len() as u64);
    d.assert_alive();
}
