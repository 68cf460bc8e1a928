//! Random command sequences against the reference model of the backing
//! state machine (`gpuswap_testkit::model`). After every step the model
//! predicts the response, the violations, faults, attaches and detaches in
//! the trace, what the display was sent, and every resource's backing
//! state, generation and hashes; the host memory accounting is predicted
//! too. The daemon's `state_machine_model` test holds the daemon to the
//! same model over its sockets.

mod common;

use common::*;
use gpuswap_device::trace::{self, EventKind};
use gpuswap_device::{DeviceConfig, Rect2d, ENTRY_OVERHEAD, RESOURCE_OVERHEAD};
use gpuswap_protocol::{blob_mem, wire, ErrorCode, Response};
use gpuswap_testkit::model::{
    self, Budget, DetachReason, DeviceUnderTest, Events, Model, Request, View, Violation, PAGES,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Two adjacent regions of half the model's pages each: backings may cross
/// between them.
const REGION_BYTES: usize = (PAGES / 2 * PAGE) as usize;

/// A `GpuDevice` over real guest memory, driven by wire bytes.
struct InProcess(Bench);

fn wire_rect(r: Rect2d) -> wire::Rect {
    rect(r.x, r.y, r.width, r.height)
}

fn violation(v: trace::Violation) -> Violation {
    match v {
        trace::Violation::UseWhileDetached => Violation::UseWhileDetached,
        trace::Violation::DoubleAttach => Violation::DoubleAttach,
        trace::Violation::DoubleDetach => Violation::DoubleDetach,
        trace::Violation::OverlappingBacking { other } => Violation::OverlappingBacking { other },
        trace::Violation::UnknownResource => Violation::UnknownResource,
        trace::Violation::DuplicateResource => Violation::DuplicateResource,
        other => Violation::Other(format!("{other:?}")),
    }
}

fn detach_reason(r: trace::DetachReason) -> DetachReason {
    match r {
        trace::DetachReason::Command => DetachReason::Command,
        trace::DetachReason::Unref => DetachReason::Unref,
        trace::DetachReason::Reset => DetachReason::Reset,
        other => DetachReason::Other(format!("{other:?}")),
    }
}

impl DeviceUnderTest for InProcess {
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), TestCaseError> {
        self.0.scatter(&[(addr, data.len() as u32)], data);
        Ok(())
    }

    fn send(&mut self, req: &Request) -> Result<Result<(), ErrorCode>, TestCaseError> {
        let bytes = match *req {
            Request::Create2d { id, width, height } => create_2d(id, model::FORMAT, width, height),
            Request::CreateBlob {
                id,
                size,
                ref entries,
            } => create_blob(id, blob_mem::GUEST, size, entries),
            Request::Attach { id, ref entries } => attach(id, entries),
            Request::Detach { id } => detach(id),
            Request::Transfer { id, rect, offset } => transfer(id, rect, offset),
            Request::Flush { id, rect } => flush(id, rect),
            Request::SetScanout { id, rect } => set_scanout(0, id, rect),
            Request::SetScanoutBlob { id, rect, layout } => set_scanout_blob(
                0,
                id,
                rect,
                (layout.width, layout.height),
                layout.stride,
                layout.offset,
            ),
            Request::Unref { id } => unref(id),
        };
        match self.0.send(&bytes) {
            Response::OkNoData => Ok(Ok(())),
            Response::Err(code) => Ok(Err(code)),
            other => Err(TestCaseError::fail(format!("{req:?}: answered {other:?}"))),
        }
    }

    fn fail_attaches(&mut self, n: u32) -> Result<(), TestCaseError> {
        self.0.dev.faults_mut().fail_attaches = n;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TestCaseError> {
        self.0.dev.reset();
        Ok(())
    }

    fn events(&mut self) -> Result<Events, TestCaseError> {
        let mut events = Events::default();
        for e in self.0.events() {
            let id = e.resource_id;
            match e.kind {
                EventKind::Violation {
                    violation: v,
                    command,
                } => {
                    events.violations.push((id, violation(v), command.into()));
                }
                EventKind::Fault { .. } => events.faults.push(id),
                EventKind::Detach { reason } => events.detaches.push((id, detach_reason(reason))),
                EventKind::Attach { .. } => events.attaches.push((id, e.generation)),
                _ => {}
            }
        }
        Ok(events)
    }

    fn shown(&mut self) -> Result<Option<Vec<model::Shown>>, TestCaseError> {
        let mut shown = Vec::new();
        for s in self.0.display.take() {
            shown.push(match s {
                Shown::Scanout {
                    scanout: 0,
                    width,
                    height,
                } => model::Shown::Scanout { width, height },
                Shown::Update {
                    scanout: 0,
                    rect,
                    pixels,
                } => model::Shown::Update {
                    rect: wire_rect(rect),
                    pixels,
                },
                other => return Err(TestCaseError::fail(format!("display sent {other:?}"))),
            });
        }
        Ok(Some(shown))
    }

    fn resources(&mut self) -> Result<Vec<View>, TestCaseError> {
        Ok(inspect_all(&mut self.0.dev))
    }

    fn host_memory_used(&mut self) -> Result<u64, TestCaseError> {
        Ok(self.0.dev.host_memory_used())
    }

    fn hash(bytes: &[u8]) -> String {
        hash(bytes)
    }
}

fn run(max_host_memory: u64, ops: &[model::Op]) -> Result<(), TestCaseError> {
    let config = DeviceConfig {
        max_host_memory,
        max_entries: 8,
        ..DeviceConfig::default()
    };
    let regions = [(0, REGION_BYTES), (REGION_BYTES as u64, REGION_BYTES)];
    let mut dut = InProcess(Bench::new(config, &regions));
    let budget = Budget {
        max_host_memory,
        resource_overhead: RESOURCE_OVERHEAD,
        entry_overhead: ENTRY_OVERHEAD,
    };
    model::run(&mut dut, &mut Model::new(0, budget), ops)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Plenty of host memory: the state machine alone.
    #[test]
    fn device_follows_the_model(ops in model::ops(1..200)) {
        run(1 << 30, &ops)?;
    }

    /// Tight host memory (about two 64x32 resources): out-of-memory paths too.
    #[test]
    fn device_follows_the_model_under_memory_pressure(ops in model::ops(1..200)) {
        run(2 * (8192 + RESOURCE_OVERHEAD) + 4 * ENTRY_OVERHEAD, &ops)?;
    }
}
