//! Refused ATTACH_BACKINGs now and then (`--fail-attach-every`): the daemon
//! refuses one, armed through its control socket, and the guest must fail
//! that use with EIO, keep the buffer's content, and attach again on the
//! next use. The content checks go on as before; this adds the count that
//! both sides must agree on.

use std::time::Instant;

use gpuswap_api::control::Fault;
use serde_json::{json, Value};

use super::Run;
use crate::Result;

/// The daemon's counter name for refused ATTACH_BACKINGs (its `errors` by
/// request type).
pub(super) const ATTACH: &str = "resource_attach_backing";

impl Run {
    /// Arms one refused ATTACH when it is time and the last one has fired
    /// (an armed one waits for the next ATTACH, however long that takes).
    pub(super) fn periodic_faults(&mut self) -> Result<()> {
        let Some(every) = self.o.fail_attach_every else {
            return Ok(());
        };
        let now = Instant::now();
        if now < self.next_refused_attach {
            return Ok(());
        }
        self.next_refused_attach = now + every;
        if self.control.fault(Fault::default())?.fail_attaches == 0 {
            self.control.fault(Fault {
                fail_attaches: Some(1),
                ..Fault::default()
            })?;
        }
        Ok(())
    }

    /// No more refusals: the final pass checks every buffer's host view.
    pub(super) fn disarm_faults(&mut self) -> Result<()> {
        if self.o.fail_attach_every.is_some() {
            self.control.fault(Fault {
                fail_attaches: Some(0),
                ..Fault::default()
            })?;
        }
        Ok(())
    }

    /// `refused_attaches_seen_by_guest`: every ATTACH the daemon refused is
    /// one the guest kernel counted as refused (none believed attached),
    /// each use the workload saw fail with EIO is one of them, and a run
    /// asked to refuse some did.
    pub(super) fn check_refused_attaches(&mut self, shrinker: &Value) {
        let host = self
            .control
            .counters()
            .map(|c| c.counters.errors.get(ATTACH).copied().unwrap_or(0));
        let guest = shrinker["attach_failures"].as_u64();
        let failed_uses = self.totals.refused_uses;
        let asked = self.o.fail_attach_every.is_some();
        let ok = match (&host, guest) {
            (Ok(host), Some(guest)) => {
                *host == guest && failed_uses <= *host && (!asked || *host > 0)
            }
            _ => false,
        };
        self.checks
            .record("refused_attaches_seen_by_guest", ok, || {
                json!({
                    "refused_by_daemon": host.as_ref().ok(),
                    "daemon_error": host.as_ref().err().map(ToString::to_string),
                    "refused_seen_by_guest": guest,
                    "uses_failed_with_eio": failed_uses,
                    "fail_attach_every_s": self.o.fail_attach_every.map(|d| d.as_secs()),
                    "hint": "the guest kernel counts refused ATTACHes in the shrinker's debugfs \
                             file (attach_failures); a missing count means the workload ended early",
                })
            });
    }
}
