//! A memory-table change can never leave the renderer with pointers into
//! the table that goes away: every backing is detached from the renderer
//! first, and one the renderer then refuses is left detached with a
//! violation in the trace.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use gpuswap_device::trace::{DetachReason, Violation};
use gpuswap_device::{
    DeviceConfig, GpuDevice, HostIovec, Rect2d, Renderer, RendererError, RutabagaRenderer,
};
use gpuswap_protocol::{ErrorCode, Request, Response};
use gpuswap_testkit::pattern;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// Rutabaga's renderer, with attaches refused on demand and a record of
/// which backing pointers it holds.
struct Refusing {
    inner: RutabagaRenderer,
    refuse_attach: Rc<Cell<bool>>,
    /// The first iovec base of each attached resource, as the renderer
    /// holds it.
    held: Rc<std::cell::RefCell<std::collections::BTreeMap<u32, usize>>>,
}

type Result<T> = std::result::Result<T, RendererError>;

impl Renderer for Refusing {
    fn create_2d(&mut self, id: u32, format: u32, width: u32, height: u32) -> Result<()> {
        self.inner.create_2d(id, format, width, height)
    }
    fn create_guest_blob(&mut self, id: u32, blob_flags: u32, size: u64) -> Result<()> {
        self.inner.create_guest_blob(id, blob_flags, size)
    }
    unsafe fn attach_backing(&mut self, id: u32, iovecs: Vec<HostIovec>) -> Result<()> {
        if self.refuse_attach.get() {
            return Err(RendererError("attach refused by the test".into()));
        }
        let first = iovecs[0].base as usize;
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.inner.attach_backing(id, iovecs) }?;
        self.held.borrow_mut().insert(id, first);
        Ok(())
    }
    fn detach_backing(&mut self, id: u32) {
        self.held.borrow_mut().remove(&id);
        self.inner.detach_backing(id)
    }
    fn transfer_to_host_2d(&mut self, id: u32, r: Rect2d, offset: u64, stride: u32) -> Result<()> {
        self.inner.transfer_to_host_2d(id, r, offset, stride)
    }
    fn read_host_copy(&mut self, id: u32, r: Rect2d, dst: &mut [u8], stride: u32) -> Result<()> {
        self.inner.read_host_copy(id, r, dst, stride)
    }
    fn write_host_copy(&mut self, id: u32, r: Rect2d, src: &[u8], stride: u32) -> Result<()> {
        self.inner.write_host_copy(id, r, src, stride)
    }
    fn unref(&mut self, id: u32) -> Result<()> {
        self.held.borrow_mut().remove(&id);
        self.inner.unref(id)
    }
}

fn send(dev: &mut GpuDevice<Refusing, Mem>, bytes: &[u8]) -> Response {
    let req = Request::decode_ctrl(bytes, 1024).expect("a valid request");
    dev.process(req)
}

#[test]
fn a_backing_the_renderer_refuses_after_a_memory_change_is_left_detached() {
    let refuse_attach = Rc::new(Cell::new(false));
    let held = Rc::default();
    let renderer = Refusing {
        inner: RutabagaRenderer::new().unwrap(),
        refuse_attach: refuse_attach.clone(),
        held: Rc::clone(&held),
    };
    let mut dev = GpuDevice::new(DeviceConfig::default(), renderer);
    let ranges = [(0, 0x10_0000)];
    let old = guest_memory(&ranges);
    dev.set_memory(old.clone());
    for id in [1, 2] {
        assert_eq!(
            send(&mut dev, &create_2d(id, XRGB, 16, 16)),
            Response::OkNoData
        );
        let at = u64::from(id) * 0x1_0000;
        assert_eq!(
            send(&mut dev, &attach(id, &[(at, 1024)])),
            Response::OkNoData
        );
    }
    let host = |mem: &Mem, id: u32| {
        let gpa = GuestAddress(u64::from(id) * 0x1_0000);
        mem.get_host_address(gpa).unwrap() as usize
    };
    let before = [held.borrow()[&1], held.borrow()[&2]];
    assert_eq!(before, [host(&old, 1), host(&old, 2)]);

    // The same guest RAM in a new table: every backing is re-resolved.
    let new = guest_memory(&ranges);
    refuse_attach.set(true);
    let seq = dev.trace().last_seq();
    dev.set_memory(new.clone());
    assert!(
        held.borrow().is_empty(),
        "the renderer still holds {:?} (old table at {before:x?})",
        held.borrow()
    );
    let events = dev.events(seq, None);
    assert_eq!(
        detaches_of(&events),
        vec![
            (1, DetachReason::ReattachFailed),
            (2, DetachReason::ReattachFailed)
        ]
    );
    assert_eq!(
        violations_of(&events),
        vec![
            (1, Violation::BackingLostOnMemoryChange, "set_mem_table"),
            (2, Violation::BackingLostOnMemoryChange, "set_mem_table"),
        ]
    );
    drop(old);
    for id in [1, 2] {
        assert_eq!(inspect(&mut dev, id).unwrap().backing, "detached");
        // Used while detached: refused, nothing read from the old table.
        assert_eq!(
            send(&mut dev, &transfer(id, rect(0, 0, 16, 16), 0)),
            Response::Err(ErrorCode::Unspec)
        );
    }

    // The guest attaches again and everything works in the new table.
    refuse_attach.set(false);
    assert_eq!(
        send(&mut dev, &attach(1, &[(0x1_0000, 1024)])),
        Response::OkNoData
    );
    let content = pattern(1024, 9);
    scatter(&new, &[(0x1_0000, 1024)], &content);
    assert_eq!(
        send(&mut dev, &transfer(1, rect(0, 0, 16, 16), 0)),
        Response::OkNoData
    );
    assert_eq!(
        inspect(&mut dev, 1).unwrap().host_hash,
        Some(hash(&content))
    );
    assert_eq!(held.borrow()[&1], host(&new, 1));
    // With the renderer willing, a change re-attaches in the new table.
    let newer = guest_memory(&ranges);
    dev.set_memory(newer.clone());
    assert_eq!(held.borrow()[&1], host(&newer, 1));
    assert_eq!(inspect(&mut dev, 1).unwrap().backing, "attached");
}
