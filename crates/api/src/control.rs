//! The daemon's control socket: line-delimited JSON, one request line, one
//! reply line (`"ok": true` and the fields of the reply type here, or
//! `"ok": false` and `"error"`). The README's control-socket section
//! documents every request; `crates/daemon/src/control.rs` serves them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One request line, tagged by `cmd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Daemon identity and what the frontend negotiated -> [`Status`].
    Status,
    /// Live resources, with hashes unless `hashes` is false; `id` narrows
    /// to one -> [`Resources`].
    Resources {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        hashes: bool,
    },
    /// Running totals -> [`Counters`].
    Counters,
    /// Retained events after sequence number `after`, optionally for one
    /// resource -> [`Events`].
    Trace {
        #[serde(default)]
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<u32>,
    },
    /// Every event from now on, one [`Event`] per line, until the client
    /// hangs up -> [`Subscribed`] first.
    Subscribe,
    /// Set fault injection knobs; omitted ones are unchanged ->
    /// [`ArmedFaults`].
    Fault(Fault),
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The `fault` request's knobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Fail this many upcoming ATTACH_BACKINGs with ERR_OUT_OF_MEMORY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_attaches: Option<u32>,
    /// Corrupt the host copy after this many successful transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_transfers: Option<u32>,
    /// Request type name (e.g. "resource_detach_backing") to delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_command: Option<String>,
    /// Delay in ms for `delay_command`; 0 removes the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Clear every fault first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
}

/// `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// The features the frontend acked, in hex (`0x0` with no frontend).
    pub acked_features: String,
    pub resources: u64,
    pub host_memory_used: u64,
    pub max_host_memory: u64,
    pub max_entries: u32,
}

impl Status {
    /// [`Status::acked_features`] as a number (0 if it does not parse).
    pub fn acked(&self) -> u64 {
        let hex = self.acked_features.trim_start_matches("0x");
        u64::from_str_radix(hex, 16).unwrap_or(0)
    }
}

/// `resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub resources: Vec<Resource>,
}

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceKind {
    #[serde(rename = "2d")]
    TwoD,
    #[serde(rename = "blob")]
    Blob,
}

/// Whether a resource has guest pages behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    Attached,
    Detached,
}

/// A live resource (the fields in this order on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub id: u32,
    pub kind: ResourceKind,
    /// 2D only.
    pub format: Option<u32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Bytes of content: the host copy (2D) or the blob.
    pub size: u64,
    pub backing: Backing,
    /// Attaches so far.
    pub generation: u64,
    pub entries: u64,
    pub backing_bytes: u64,
    /// xxh3-64 of the host copy (2D only), 16 hex digits.
    pub host_hash: Option<String>,
    /// xxh3-64 of the first `size` bytes of the attached backing.
    pub backing_hash: Option<String>,
    /// Set when the host copy changed while it was being hashed (there is
    /// then no `host_hash`: ask again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_changed: bool,
    /// The scanouts showing it.
    pub scanouts: Vec<u32>,
    pub uuid: Option<String>,
}

impl Resource {
    pub fn is_attached(&self) -> bool {
        self.backing == Backing::Attached
    }
}

/// `counters`: the device's totals and the daemon's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub counters: DeviceCounters,
    /// Connections dropped for a ring the daemon could not trust.
    pub ring_errors: u64,
    pub resources: u64,
    pub host_memory_used: u64,
    pub last_seq: u64,
}

/// Running totals since the daemon started (not reset by a device reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// Requests by type name, including failed ones.
    pub commands: BTreeMap<String, u64>,
    /// Error responses by request type name.
    pub errors: BTreeMap<String, u64>,
    /// Requests that could not be decoded (short, unknown, too many entries).
    pub malformed: u64,
    pub attaches: u64,
    pub detaches: u64,
    pub implicit_detaches: u64,
    pub transfers: u64,
    pub bytes_transferred: u64,
    pub flushes: u64,
    pub violations: u64,
    pub resources_created: u64,
    pub resources_unreferenced: u64,
    pub faults_injected: u64,
}

/// `trace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

/// `subscribe`'s first line; events follow, one per line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub subscribed: bool,
    pub last_seq: u64,
}

/// `fault`: what is armed after the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedFaults {
    pub fail_attaches: u32,
    pub corrupt_transfers: u32,
    /// Completion delays by request type name.
    pub delay_ms: BTreeMap<String, u64>,
}

/// One entry of the device's event trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing, starting at 1; a gap means events were lost.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub resource_id: u32,
    /// The resource's attach generation when the event happened.
    pub generation: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum EventKind {
    Create {
        kind: ResourceKind,
        size: u64,
    },
    Attach {
        entries: u32,
        bytes: u64,
    },
    Detach {
        reason: DetachReason,
    },
    Transfer {
        rect: Rect,
        offset: u64,
    },
    Flush {
        rect: Rect,
    },
    Scanout {
        scanout_id: u32,
        enabled: bool,
    },
    Unref,
    Violation {
        #[serde(flatten)]
        violation: Violation,
        /// The request type that broke the rule (`set_mem_table` for a
        /// memory-table change).
        command: String,
    },
    /// An injected fault fired.
    Fault {
        #[serde(flatten)]
        fault: InjectedFault,
    },
}

impl Event {
    /// The violation, if this event is one.
    pub fn violation(&self) -> Option<&Violation> {
        match &self.kind {
            EventKind::Violation { violation, .. } => Some(violation),
            _ => None,
        }
    }

    /// The event's tag (`attach`, `detach`, ...).
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::Create { .. } => "create",
            EventKind::Attach { .. } => "attach",
            EventKind::Detach { .. } => "detach",
            EventKind::Transfer { .. } => "transfer",
            EventKind::Flush { .. } => "flush",
            EventKind::Scanout { .. } => "scanout",
            EventKind::Unref => "unref",
            EventKind::Violation { .. } => "violation",
            EventKind::Fault { .. } => "fault",
        }
    }
}

/// Why a backing went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachReason {
    /// RESOURCE_DETACH_BACKING.
    Command,
    /// RESOURCE_UNREF of an attached resource.
    Unref,
    /// Device reset or frontend disconnect.
    Reset,
    /// The memory table changed and the backing is no longer guest RAM.
    MemoryRemoved,
    /// The memory table changed and the renderer refused the backing again.
    ReattachFailed,
}

/// A broken protocol rule, tagged by `violation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "violation")]
pub enum Violation {
    /// Transfer, flush, scanout or cursor use of a detached resource.
    UseWhileDetached,
    /// ATTACH_BACKING on an attached resource.
    DoubleAttach,
    /// DETACH_BACKING on a detached resource.
    DoubleDetach,
    /// The new backing shares guest pages with another live resource.
    OverlappingBacking { other: u32 },
    /// A command named a resource id that is not live.
    UnknownResource,
    /// RESOURCE_CREATE_* with an id that is already live.
    DuplicateResource,
    /// A live backing left guest RAM on a memory-table change.
    BackingLeftGuestRam,
    /// A live backing could not be given back to the renderer after a
    /// memory-table change (the resource is left detached).
    BackingLostOnMemoryChange,
}

/// An armed fault as it fired, tagged by `fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum InjectedFault {
    /// An ATTACH_BACKING was failed with ERR_OUT_OF_MEMORY.
    FailAttach,
    /// After a TRANSFER_TO_HOST_2D, byte `host_offset` of the host copy
    /// (the transferred rect's first byte) was XORed with 0xff.
    CorruptTransfer { host_offset: u64 },
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn requests_serialize_as_the_readme_writes_them() {
        let line = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(line(&Request::Status), r#"{"cmd":"status"}"#);
        assert_eq!(
            line(&Request::Resources {
                id: None,
                hashes: true
            }),
            r#"{"cmd":"resources"}"#
        );
        assert_eq!(
            line(&Request::Resources {
                id: Some(3),
                hashes: false
            }),
            r#"{"cmd":"resources","id":3,"hashes":false}"#
        );
        assert_eq!(
            line(&Request::Fault(Fault {
                delay_command: Some("resource_detach_backing".into()),
                delay_ms: Some(50),
                ..Fault::default()
            })),
            r#"{"cmd":"fault","delay_command":"resource_detach_backing","delay_ms":50}"#
        );
        let parse = |s: &str| serde_json::from_str::<Request>(s);
        assert_eq!(
            parse(r#"{"cmd":"trace","after":4,"resource":null}"#).unwrap(),
            Request::Trace {
                after: 4,
                resource: None
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"fault","clear":true}"#).unwrap(),
            Request::Fault(Fault {
                clear: true,
                ..Fault::default()
            })
        );
        assert!(parse(r#"{"cmd":"fault","fail_attach":1}"#).is_err());
        assert!(parse(r#"{"cmd":"resources","hash":false}"#).is_err());
        assert!(parse(r#"{"cmd":"warp"}"#).is_err());
    }

    #[test]
    fn events_are_flat_objects() {
        let events = [
            json!({"seq": 1, "time_us": 5, "resource_id": 9, "generation": 2,
                "event": "violation", "violation": "overlapping_backing", "other": 4,
                "command": "resource_attach_backing"}),
            json!({"seq": 2, "time_us": 6, "resource_id": 3, "generation": 1,
                "event": "fault", "fault": "corrupt_transfer", "host_offset": 68}),
            json!({"seq": 3, "time_us": 7, "resource_id": 3, "generation": 1,
                "event": "transfer", "rect": {"x": 0, "y": 1, "width": 2, "height": 3},
                "offset": 64}),
            json!({"seq": 4, "time_us": 8, "resource_id": 3, "generation": 0,
                "event": "create", "kind": "2d", "size": 4096}),
            json!({"seq": 5, "time_us": 9, "resource_id": 3, "generation": 1,
                "event": "detach", "reason": "reattach_failed"}),
            json!({"seq": 6, "time_us": 9, "resource_id": 3, "generation": 1,
                "event": "unref"}),
        ];
        for value in events {
            let event: Event = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&event).unwrap(), value);
            assert_eq!(Value::from(event.name()), value["event"]);
        }
        let e: Event = serde_json::from_value(json!({"seq": 1, "time_us": 5,
            "resource_id": 9, "generation": 0, "event": "violation",
            "violation": "double_detach", "command": "resource_detach_backing"}))
        .unwrap();
        assert_eq!(e.violation(), Some(&Violation::DoubleDetach));
    }

    #[test]
    fn resources_keep_their_field_order_and_leave_out_a_settled_host_copy() {
        let r = Resource {
            id: 1,
            kind: ResourceKind::TwoD,
            format: Some(2),
            width: Some(4),
            height: Some(4),
            size: 64,
            backing: Backing::Detached,
            generation: 0,
            entries: 0,
            backing_bytes: 0,
            host_hash: Some(crate::hex(0xab)),
            backing_hash: None,
            host_changed: false,
            scanouts: vec![],
            uuid: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":1,"kind":"2d","format":2,"width":4,"height":4,"size":64,"backing":"detached","generation":0,"entries":0,"backing_bytes":0,"host_hash":"00000000000000ab","backing_hash":null,"scanouts":[],"uuid":null}"#
        );
        let changed = Resource {
            host_changed: true,
            ..r
        };
        let v = serde_json::to_value(&changed).unwrap();
        assert_eq!(v["host_changed"], true);
        assert_eq!(serde_json::from_value::<Resource>(v).unwrap(), changed);
    }

    #[test]
    fn acked_features_read_as_a_number() {
        let st = Status {
            acked_features: "0x140000000".into(),
            ..Status::default()
        };
        assert_eq!(st.acked(), 0x1_4000_0000);
    }
}
