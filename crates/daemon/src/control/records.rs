//! The device's trace events and running totals as the control socket
//! shows them (`gpuswap_api::control`).

use std::collections::BTreeMap;

use gpuswap_api::control as api;
use gpuswap_device::trace::{Counters, DetachReason, Event, EventKind, InjectedFault, Violation};
use gpuswap_device::{Rect2d, ResourceKind};

/// A resource kind as the protocol names it.
pub(super) fn kind(kind: ResourceKind) -> api::ResourceKind {
    match kind {
        ResourceKind::TwoD { .. } => api::ResourceKind::TwoD,
        ResourceKind::GuestBlob { .. } => api::ResourceKind::Blob,
    }
}

/// The device's running totals.
pub(super) fn device_counters(c: &Counters) -> api::DeviceCounters {
    let by_name = |counts: &BTreeMap<&'static str, u64>| {
        counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    api::DeviceCounters {
        commands: by_name(&c.commands),
        errors: by_name(&c.errors),
        malformed: c.malformed,
        attaches: c.attaches,
        detaches: c.detaches,
        implicit_detaches: c.implicit_detaches,
        transfers: c.transfers,
        bytes_transferred: c.bytes_transferred,
        flushes: c.flushes,
        violations: c.violations,
        resources_created: c.resources_created,
        resources_unreferenced: c.resources_unreferenced,
        faults_injected: c.faults_injected,
    }
}

/// One trace event.
pub(super) fn event(e: &Event) -> api::Event {
    api::Event {
        seq: e.seq,
        time_us: e.time_us,
        resource_id: e.resource_id,
        generation: e.generation,
        kind: event_kind(&e.kind),
    }
}

fn rect(r: Rect2d) -> api::Rect {
    api::Rect {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

fn event_kind(e: &EventKind) -> api::EventKind {
    match *e {
        EventKind::Create { kind: k, size } => api::EventKind::Create {
            kind: kind(k),
            size,
        },
        EventKind::Attach { entries, bytes } => api::EventKind::Attach { entries, bytes },
        EventKind::Detach { reason } => api::EventKind::Detach {
            reason: detach_reason(reason),
        },
        EventKind::Transfer { rect: r, offset } => api::EventKind::Transfer {
            rect: rect(r),
            offset,
        },
        EventKind::Flush { rect: r } => api::EventKind::Flush { rect: rect(r) },
        EventKind::Scanout {
            scanout_id,
            enabled,
        } => api::EventKind::Scanout {
            scanout_id,
            enabled,
        },
        EventKind::Unref => api::EventKind::Unref,
        EventKind::Violation {
            violation: v,
            command,
        } => api::EventKind::Violation {
            violation: violation(v),
            command: command.to_string(),
        },
        EventKind::Fault { fault } => api::EventKind::Fault {
            fault: match fault {
                InjectedFault::FailAttach => api::InjectedFault::FailAttach,
                InjectedFault::CorruptTransfer { host_offset } => {
                    api::InjectedFault::CorruptTransfer { host_offset }
                }
            },
        },
    }
}

fn detach_reason(reason: DetachReason) -> api::DetachReason {
    match reason {
        DetachReason::Command => api::DetachReason::Command,
        DetachReason::Unref => api::DetachReason::Unref,
        DetachReason::Reset => api::DetachReason::Reset,
        DetachReason::MemoryRemoved => api::DetachReason::MemoryRemoved,
        DetachReason::ReattachFailed => api::DetachReason::ReattachFailed,
    }
}

fn violation(v: Violation) -> api::Violation {
    match v {
        Violation::UseWhileDetached => api::Violation::UseWhileDetached,
        Violation::DoubleAttach => api::Violation::DoubleAttach,
        Violation::DoubleDetach => api::Violation::DoubleDetach,
        Violation::OverlappingBacking { other } => api::Violation::OverlappingBacking { other },
        Violation::UnknownResource => api::Violation::UnknownResource,
        Violation::DuplicateResource => api::Violation::DuplicateResource,
        Violation::BackingLeftGuestRam => api::Violation::BackingLeftGuestRam,
        Violation::BackingLostOnMemoryChange => api::Violation::BackingLostOnMemoryChange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(kind: EventKind) -> serde_json::Value {
        let e = Event {
            seq: 4,
            time_us: 5,
            resource_id: 9,
            generation: 2,
            kind,
        };
        serde_json::to_value(event(&e)).unwrap()
    }

    /// The trace's events on the wire: flat objects tagged by `event`,
    /// violations and faults tagged inside them.
    #[test]
    fn events_are_flat_on_the_wire() {
        let head = json!({"seq": 4, "time_us": 5, "resource_id": 9, "generation": 2});
        let with = |fields: serde_json::Value| {
            let mut v = head.clone();
            v.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            v
        };
        let r = Rect2d {
            x: 1,
            y: 2,
            width: 3,
            height: 4,
        };
        let cases = [
            (
                EventKind::Create {
                    kind: ResourceKind::TwoD {
                        format: 2,
                        width: 4,
                        height: 4,
                    },
                    size: 64,
                },
                json!({"event": "create", "kind": "2d", "size": 64}),
            ),
            (
                EventKind::Create {
                    kind: ResourceKind::GuestBlob { flags: 1, size: 8 },
                    size: 8,
                },
                json!({"event": "create", "kind": "blob", "size": 8}),
            ),
            (
                EventKind::Attach {
                    entries: 2,
                    bytes: 8192,
                },
                json!({"event": "attach", "entries": 2, "bytes": 8192}),
            ),
            (
                EventKind::Detach {
                    reason: DetachReason::MemoryRemoved,
                },
                json!({"event": "detach", "reason": "memory_removed"}),
            ),
            (
                EventKind::Transfer { rect: r, offset: 7 },
                json!({"event": "transfer", "rect": {"x": 1, "y": 2, "width": 3, "height": 4},
                    "offset": 7}),
            ),
            (
                EventKind::Flush { rect: r },
                json!({"event": "flush", "rect": {"x": 1, "y": 2, "width": 3, "height": 4}}),
            ),
            (
                EventKind::Scanout {
                    scanout_id: 1,
                    enabled: false,
                },
                json!({"event": "scanout", "scanout_id": 1, "enabled": false}),
            ),
            (EventKind::Unref, json!({"event": "unref"})),
            (
                EventKind::Violation {
                    violation: Violation::OverlappingBacking { other: 4 },
                    command: "resource_attach_backing",
                },
                json!({"event": "violation", "violation": "overlapping_backing", "other": 4,
                    "command": "resource_attach_backing"}),
            ),
            (
                EventKind::Violation {
                    violation: Violation::BackingLostOnMemoryChange,
                    command: "set_mem_table",
                },
                json!({"event": "violation", "violation": "backing_lost_on_memory_change",
                    "command": "set_mem_table"}),
            ),
            (
                EventKind::Fault {
                    fault: InjectedFault::FailAttach,
                },
                json!({"event": "fault", "fault": "fail_attach"}),
            ),
            (
                EventKind::Fault {
                    fault: InjectedFault::CorruptTransfer { host_offset: 68 },
                },
                json!({"event": "fault", "fault": "corrupt_transfer", "host_offset": 68}),
            ),
        ];
        for (kind, fields) in cases {
            assert_eq!(line(kind), with(fields));
        }
    }

    /// A subscriber's line keeps the fields in the order they always had.
    #[test]
    fn a_streamed_event_starts_with_its_sequence_number() {
        let e = Event {
            seq: 1,
            time_us: 2,
            resource_id: 3,
            generation: 4,
            kind: EventKind::Detach {
                reason: DetachReason::Command,
            },
        };
        assert_eq!(
            serde_json::to_string(&event(&e)).unwrap(),
            r#"{"seq":1,"time_us":2,"resource_id":3,"generation":4,"event":"detach","reason":"command"}"#
        );
    }
}
