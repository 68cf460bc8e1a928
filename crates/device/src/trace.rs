//! The event trace and counters: what the device did to each resource, in
//! order, for the control socket, the harness and race debugging.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::renderer::Rect2d;
use crate::ResourceKind;

/// Why a backing went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A broken protocol rule. The offending request gets an error response and
/// changes nothing, except `OverlappingBacking` (the attach goes through: the
/// overlap is a guest bug to report, not to refuse), `BackingLeftGuestRam`
/// and `BackingLostOnMemoryChange` (raised by a memory-table change, not by
/// a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Create {
        kind: ResourceKind,
        /// Bytes of content (see [`ResourceKind::content_len`]).
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
        rect: Rect2d,
        offset: u64,
    },
    Flush {
        rect: Rect2d,
    },
    Scanout {
        scanout_id: u32,
        enabled: bool,
    },
    Unref,
    Violation {
        violation: Violation,
        /// The request type that broke the rule (`set_mem_table` for a
        /// memory-table change).
        command: &'static str,
    },
    /// An injected fault fired.
    Fault {
        fault: InjectedFault,
    },
}

/// A fault the control socket or the command line armed (see
/// `Faults`), as it fired on a resource. Not a guest violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// An ATTACH_BACKING was failed with ERR_OUT_OF_MEMORY.
    FailAttach,
    /// After a TRANSFER_TO_HOST_2D, byte `host_offset` of the host copy
    /// (the transferred rect's first byte) was XORed with 0xff, so the
    /// host copy no longer matches the guest's data.
    CorruptTransfer { host_offset: u64 },
}

/// One trace entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Strictly increasing, starting at 1; a gap means events were lost.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub resource_id: u32,
    /// The resource's attach generation when the event happened.
    pub generation: u64,
    pub kind: EventKind,
}

/// A bounded event history plus live subscribers.
pub struct Trace {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
    subscribers: Vec<SyncSender<Event>>,
}

/// Events a slow subscriber may lag behind before it misses some.
const SUBSCRIBER_BACKLOG: usize = 1 << 16;

impl Trace {
    pub fn new(capacity: usize) -> Self {
        Trace {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            next_seq: 1,
            subscribers: Vec::new(),
        }
    }

    /// Appends an event and forwards it to subscribers. A subscriber that
    /// is full misses the event (it sees a gap in `seq`); one that hung up
    /// is dropped.
    pub fn record(&mut self, resource_id: u32, generation: u64, kind: EventKind) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let event = Event {
            seq,
            time_us,
            resource_id,
            generation,
            kind,
        };
        self.subscribers.retain(|s| {
            !matches!(
                s.try_send(event.clone()),
                Err(TrySendError::Disconnected(_))
            )
        });
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
        seq
    }

    /// Retained events with `seq > after`, optionally for one resource.
    pub fn since(&self, after: u64, resource_id: Option<u32>) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > after && resource_id.is_none_or(|id| e.resource_id == id))
            .cloned()
            .collect()
    }

    /// A live feed of every event recorded from now on.
    pub fn subscribe(&mut self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(SUBSCRIBER_BACKLOG);
        self.subscribers.push(tx);
        rx
    }

    /// Sequence number of the last event recorded (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
}

/// Running totals since the daemon started (not reset by device reset).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Requests by type name, including failed ones.
    pub commands: BTreeMap<&'static str, u64>,
    /// Error responses by request type name.
    pub errors: BTreeMap<&'static str, u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_history_keeps_sequence_numbers() {
        let mut t = Trace::new(2);
        for id in 1..=3 {
            t.record(id, 0, EventKind::Unref);
        }
        let kept = t.since(0, None);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(t.since(2, Some(3)).len(), 1);
        assert_eq!(t.last_seq(), 3);
    }

    #[test]
    fn subscribers_see_new_events_and_hangups_are_dropped() {
        let mut t = Trace::new(8);
        let rx = t.subscribe();
        t.record(
            5,
            1,
            EventKind::Detach {
                reason: DetachReason::Command,
            },
        );
        assert_eq!(rx.recv().unwrap().resource_id, 5);
        drop(rx);
        t.record(5, 1, EventKind::Unref);
        assert!(t.subscribers.is_empty());
    }
}
