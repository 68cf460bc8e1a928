//! The guest workload: buffers of mixed sizes and kinds, each written
//! through its mapping with content that follows from (seed, buffer,
//! version), transferred to the host, read back, madvised, closed and
//! created again; one of them stays on scanout. Every step is checked
//! from the guest side and through the daemon's control socket.

use std::collections::VecDeque;
use std::time::Duration;

use gpuswap_api::agent::{self, Madv, Pattern};
use gpuswap_testkit::Rng;
use serde_json::{json, Value};

use super::Run;
use crate::{poll_every, Result};

/// Harness-side history kept per buffer for failure reports.
const HISTORY: usize = 24;
/// How long to keep asking for a host copy that a restore changed while
/// the daemon hashed it.
const HOST_SETTLE: Duration = Duration::from_secs(3);

/// The scanout buffer's size: one of the display's modes.
const SCANOUT_SIZE: (u32, u32) = (1024, 768);

const EIO: i64 = 5;
const EINVAL: i64 = 22;
const SIGBUS: i32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoKind {
    TwoD,
    Blob,
}

impl BoKind {
    fn name(self) -> &'static str {
        match self {
            BoKind::TwoD => "2d",
            BoKind::Blob => "blob",
        }
    }
}

#[derive(Debug)]
pub struct Bo {
    /// Unique per created buffer: the pattern's `bo` key.
    pub serial: u64,
    pub handle: u32,
    pub res_id: u32,
    pub kind: BoKind,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    /// Incompressible content for some, compressible for the rest, so
    /// that eviction to zram really frees memory.
    pub pattern: Pattern,
    /// Last version written (0: none yet).
    pub version: u64,
    /// The guest's hash of that version.
    pub hash: Option<String>,
    /// Takes part in madvise cycles.
    pub madvise: bool,
    /// Currently DONTNEED: must not be touched before WILLNEED.
    pub dontneed: bool,
    pub history: VecDeque<Value>,
}

impl Bo {
    fn note(&mut self, action: &str, detail: Value) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(json!({
            "time_us": crate::unix_us(),
            "action": action,
            "version": self.version,
            "detail": detail,
        }));
    }

    fn write(&self, version: u64, seed: u64) -> agent::Write {
        agent::Write {
            handle: self.handle,
            seed,
            bo: self.serial,
            version,
            pattern: Some(self.pattern),
        }
    }

    fn verify(&self, seed: u64) -> agent::Verify {
        agent::Verify {
            handle: self.handle,
            seed,
            bo: self.serial,
            version: self.version,
            pattern: Some(self.pattern),
        }
    }
}

/// Counts of what the workload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Totals {
    pub steps: u64,
    pub created_2d: u64,
    pub created_blobs: u64,
    pub writes: u64,
    pub transfers: u64,
    pub verifies: u64,
    pub dontneed: u64,
    pub willneed: u64,
    pub purged_seen: u64,
    pub recreated: u64,
    pub scanout_flips: u64,
    pub bytes_written: u64,
    /// Uses that failed with EIO because the host refused the backing.
    pub refused_uses: u64,
}

impl Run {
    /// Creates the buffer for `slot` (new or replacing a closed one).
    pub(super) fn create_bo(&mut self, slot: usize) -> Result<Bo> {
        // Each buffer's traits come from its own stream (seed, serial), not
        // from the action stream: a buffer replaced because the shrinker
        // purged it does not shift the actions that follow.
        self.next_serial += 1;
        let serial = self.next_serial;
        let mut rng = Rng::new(self.o.seed ^ serial.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (width, height) = if slot == 0 {
            SCANOUT_SIZE
        } else {
            self.o.sizes[rng.below(self.o.sizes.len() as u64) as usize]
        };
        let kind = if self.blob && rng.chance(self.o.blob_share) {
            BoKind::Blob
        } else {
            BoKind::TwoD
        };
        let bytes = u64::from(width) * u64::from(height) * 4;
        let created = match kind {
            BoKind::TwoD => self.agent.request(agent::Create2d {
                width,
                height,
                format: None,
            })?,
            BoKind::Blob => self.agent.request(agent::CreateBlob {
                size: bytes,
                blob_flags: None,
            })?,
        };
        match kind {
            BoKind::TwoD => self.totals.created_2d += 1,
            BoKind::Blob => self.totals.created_blobs += 1,
        }
        let mut bo = Bo {
            serial,
            handle: created.handle,
            res_id: created.res_id,
            kind,
            width,
            height,
            bytes,
            pattern: if rng.chance(0.25) {
                Pattern::Random
            } else {
                Pattern::Sparse
            },
            version: 0,
            hash: None,
            madvise: slot != 0 && rng.chance(self.o.madvise_share),
            dontneed: false,
            history: VecDeque::new(),
        };
        bo.note(
            "create",
            json!({"kind": kind.name(), "bytes": bytes, "res_id": bo.res_id}),
        );
        Ok(bo)
    }

    /// One workload step on a random buffer (slot 0 is the scanout one).
    pub(super) fn step(&mut self) -> Result<()> {
        self.totals.steps += 1;
        if self.totals.steps.is_multiple_of(25) {
            return self.flip_scanout();
        }
        let slot = 1 + self.rng.below(self.bos.len() as u64 - 1) as usize;
        let bo = &self.bos[slot];
        if bo.dontneed {
            return self.willneed(slot);
        }
        if bo.version == 0 {
            return self.publish(slot);
        }
        let roll = self.rng.below(100);
        match roll {
            0..=39 => self.publish(slot),
            40..=79 => self.verify(slot, "guest_content_intact"),
            80..=95 if bo.madvise => self.dontneed(slot),
            96..=98 => self.recreate(slot, "churn"),
            _ => self.verify(slot, "guest_content_intact"),
        }
    }

    /// Writes the next version through the mapping and makes the host see
    /// it: a transfer for 2D, nothing for a blob (its pages are shared);
    /// then checks the host's view.
    pub(super) fn publish(&mut self, slot: usize) -> Result<()> {
        let version = self.bos[slot].version + 1;
        let written = self
            .agent
            .request(self.bos[slot].write(version, self.o.seed))?;
        self.totals.writes += 1;
        self.totals.bytes_written += self.bos[slot].bytes;
        let bo = &mut self.bos[slot];
        bo.version = version;
        bo.hash = Some(written.hash);
        bo.note("write", json!({"hash": bo.hash}));
        let kind = bo.kind;
        match kind {
            BoKind::Blob => self.check_host(slot, false),
            BoKind::TwoD if self.transfer_to_host(slot)? => self.check_host(slot, true),
            // Refused: the host keeps the last version it was given.
            BoKind::TwoD => Ok(()),
        }
    }

    /// TRANSFER_TO_HOST of the whole buffer: whether it went through. EIO
    /// means the host refused the backing (`--fail-attach-every`); the
    /// guest keeps the content and the next use attaches again.
    fn transfer_to_host(&mut self, slot: usize) -> Result<bool> {
        let handle = self.bos[slot].handle;
        let request = agent::TransferToHost {
            handle,
            ..Default::default()
        };
        let (errno, line) = self.agent.request_errno_with_line(request)?;
        match errno {
            None => {
                self.totals.transfers += 1;
                self.bos[slot].note("transfer_to_host", line);
                Ok(true)
            }
            Some(EIO) => {
                self.totals.refused_uses += 1;
                self.bos[slot].note("transfer_to_host_refused", line);
                Ok(false)
            }
            Some(_) => Err(format!(
                "transfer to host of buffer {handle} failed: {line}"
            )),
        }
    }

    /// The daemon's view of a buffer against the guest's hash: the host
    /// copy (2D, right after a transfer) and the attached backing (both;
    /// skipped when reclaim detached it meanwhile).
    fn check_host(&mut self, slot: usize, transferred: bool) -> Result<()> {
        let (res_id, hash) = (self.bos[slot].res_id, self.bos[slot].hash.clone());
        let mut host = None;
        let mut error = None;
        // The guest waits for its ATTACH's answer, and a transfer is done
        // when the agent answers: the daemon's view is final, unless the
        // host copy changed while the daemon hashed it (the guest restored
        // it meanwhile), which leaves no hash to compare.
        poll_every(Duration::from_millis(20), HOST_SETTLE, || {
            match self.control.resource(res_id) {
                Err(e) => error = Some(e),
                Ok(resource) => host = resource,
            }
            let torn = host.as_ref().is_some_and(|h| h.host_changed);
            (error.is_some() || !torn).then_some(())
        });
        if let Some(e) = error {
            return Err(e.into());
        }
        if transferred {
            let host_hash = host.as_ref().and_then(|h| h.host_hash.clone());
            self.check(
                "host_copy_matches_guest",
                host_hash == hash,
                Some(slot),
                json!({"guest_hash": hash, "host_hash": host_hash}),
            )?;
        }
        match &host {
            Some(h) if h.is_attached() => {
                let ok = h.backing_hash == hash;
                let detail = json!({"guest_hash": hash, "backing_hash": h.backing_hash, "generation": h.generation});
                self.check("attached_backing_matches_guest", ok, Some(slot), detail)?;
            }
            None if self.bos[slot].kind == BoKind::Blob => {
                self.check(
                    "attached_backing_matches_guest",
                    false,
                    Some(slot),
                    json!({"error": "the daemon does not know this resource"}),
                )?;
            }
            _ => self.checks.skip("attached_backing_matches_guest"),
        }
        Ok(())
    }

    /// Reads the buffer back through its mapping (restoring it if it was
    /// evicted) and compares with what was last written.
    pub(super) fn verify(&mut self, slot: usize, check: &'static str) -> Result<()> {
        let verify = self.bos[slot].verify(self.o.seed);
        let (verified, line) = self.agent.request_with_line(verify)?;
        self.totals.verifies += 1;
        self.bos[slot].note("verify", line.clone());
        self.check(check, verified.ok_content, Some(slot), line)
    }

    fn dontneed(&mut self, slot: usize) -> Result<()> {
        let handle = self.bos[slot].handle;
        let (_, r) = self.agent.request_with_line(agent::Madvise {
            handle,
            madv: Madv::Dontneed,
        })?;
        self.totals.dontneed += 1;
        let bo = &mut self.bos[slot];
        bo.dontneed = true;
        bo.note("madvise_dontneed", r);
        Ok(())
    }

    /// WILLNEED on a DONTNEED buffer: if it was kept, its content must be
    /// intact; if it was purged, using it must fail as documented (-EINVAL
    /// for a transfer, SIGBUS for a touch) and it is replaced.
    fn willneed(&mut self, slot: usize) -> Result<()> {
        let handle = self.bos[slot].handle;
        let (retained, r) = self.agent.request_with_line(agent::Madvise {
            handle,
            madv: Madv::Willneed,
        })?;
        self.totals.willneed += 1;
        let retained = retained.retained;
        self.bos[slot].dontneed = false;
        self.bos[slot].note("madvise_willneed", r);
        if retained {
            return self.verify(slot, "guest_content_intact");
        }
        self.totals.purged_seen += 1;
        let (ok, detail) = match self.bos[slot].kind {
            BoKind::TwoD => {
                let errno = self.agent.request_errno(agent::TransferToHost {
                    handle,
                    ..Default::default()
                })?;
                (errno == Some(EINVAL), json!({"transfer_errno": errno}))
            }
            BoKind::Blob => {
                let (touched, line) = self.agent.request_with_line(agent::Touch {
                    handle,
                    offset: None,
                })?;
                (touched.signal == Some(SIGBUS), line)
            }
        };
        self.bos[slot].note("use_after_purge", detail.clone());
        self.check("purged_buffer_refuses_use", ok, Some(slot), detail)?;
        self.recreate(slot, "purged")
    }

    /// Closes the buffer and creates a new one in its slot.
    pub(super) fn recreate(&mut self, slot: usize, why: &str) -> Result<()> {
        let handle = self.bos[slot].handle;
        self.agent.request(agent::Close { handle })?;
        let old = self.bos[slot].res_id;
        self.bos[slot] = self.create_bo(slot)?;
        self.totals.recreated += 1;
        self.bos[slot].note("recreate", json!({"why": why, "replaces_res_id": old}));
        Ok(())
    }

    /// Puts slot 0 on the scanout (first call) or writes a new version and
    /// flips to it again; a scanout buffer is pinned: never evicted, always
    /// attached with the guest's content.
    pub(super) fn flip_scanout(&mut self) -> Result<()> {
        self.publish(0)?;
        let bo = &self.bos[0];
        let blob = bo.kind == BoKind::Blob;
        let scanout = agent::Scanout {
            handle: bo.handle,
            width: blob.then_some(bo.width),
            height: blob.then_some(bo.height),
            stride: None,
        };
        let (errno, r) = self.agent.request_errno_with_line(scanout)?;
        match errno {
            None => {
                self.totals.scanout_flips += 1;
                self.bos[0].note("scanout", r);
                self.check_scanout()
            }
            // Pinning attaches it; the host refused the backing, and the
            // last flip stays on screen.
            Some(EIO) => {
                self.totals.refused_uses += 1;
                self.bos[0].note("scanout_refused", r);
                Ok(())
            }
            Some(_) => Err(format!("scanout flip failed: {r}")),
        }
    }

    /// The scanout buffer is attached and shown (checked at every sample).
    pub(super) fn check_scanout(&mut self) -> Result<()> {
        if self.totals.scanout_flips == 0 {
            return Ok(());
        }
        let host = self.control.resource(self.bos[0].res_id)?;
        let ok = host
            .as_ref()
            .is_some_and(|h| h.is_attached() && !h.scanouts.is_empty());
        self.check("scanout_stays_attached", ok, Some(0), json!({"host": host}))
    }

    /// Records a check; a failure gets the buffer's story from both sides.
    pub(super) fn check(
        &mut self,
        name: &'static str,
        ok: bool,
        slot: Option<usize>,
        detail: Value,
    ) -> Result<()> {
        if ok {
            self.checks.record(name, true, || Value::Null);
            return Ok(());
        }
        let context = match slot {
            Some(slot) => self.buffer_context(slot, detail),
            None => detail,
        };
        self.checks.record(name, false, || context);
        Ok(())
    }

    /// A buffer's identity, the harness's and guest's recent view of it and
    /// the daemon's trace of its resource, merged by time.
    fn buffer_context(&mut self, slot: usize, detail: Value) -> Value {
        let bo = &self.bos[slot];
        let (res_id, handle) = (bo.res_id, bo.handle);
        let guest_info = self
            .agent
            .request_with_line(agent::Info { handle })
            .map_or_else(|e| json!({ "error": e }), |(_, line)| line);
        let mut trace = self.control.trace(0, Some(res_id)).unwrap_or_default();
        let trace = trace.split_off(trace.len().saturating_sub(HISTORY));
        let bo = &self.bos[slot];
        json!({
            "res_id": res_id,
            "buffer": bo.serial,
            "slot": slot,
            "kind": bo.kind.name(),
            "size": [bo.width, bo.height],
            "bytes": bo.bytes,
            "pattern": bo.pattern,
            "version": bo.version,
            "detail": detail,
            "guest_info": guest_info,
            "guest_history": bo.history,
            "daemon_trace": trace,
            "t_s": self.started.elapsed().as_secs_f64(),
            "time_us": crate::unix_us(),
        })
    }

    /// At the end, with pressure released: every buffer restored and
    /// checked once more from both sides, then closed.
    pub(super) fn final_pass(&mut self) -> Result<()> {
        for slot in 0..self.bos.len() {
            if self.bos[slot].dontneed {
                self.willneed(slot)?;
            }
            if self.bos[slot].version == 0 {
                self.publish(slot)?;
            }
            self.verify(slot, "final_content_intact")?;
            // The host's view of the restored pages: re-attached by this
            // transfer (2D) or by the verify's fault (blob).
            if self.bos[slot].kind == BoKind::TwoD {
                if self.transfer_to_host(slot)? {
                    self.check_host(slot, true)?;
                }
            } else {
                self.check_host(slot, false)?;
            }
        }
        Ok(())
    }
}
