//! vhost-user glue: feature negotiation, config space, memory table
//! updates, and moving requests between the virtqueues and the device
//! model.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpuswap_device::{DeviceConfig, GpuDevice, RutabagaRenderer};
use gpuswap_protocol::wire::{CtrlHeader, MemEntry, ResourceCreateBlob, VirtioGpuConfig};
use gpuswap_protocol::{ctrl_type, features, DecodeError, ErrorCode, Request, Response};
use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::GpuBackend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::{
    ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::display::SocketDisplay;

/// Guest memory as vhost-user-backend maps it.
pub type GuestMemory = GuestMemoryMmap<()>;
/// The device model as the daemon runs it.
pub type Device = GpuDevice<RutabagaRenderer, GuestMemory>;

pub const CONTROL_QUEUE: u16 = 0;
pub const CURSOR_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
const QUEUE_SIZE: usize = 1024;

/// The virtio-gpu features this backend implements. VIRGL and
/// CONTEXT_INIT are left out: there is no 3D renderer to back them.
pub const GPU_FEATURES: u64 = 1 << features::VIRTIO_GPU_F_EDID
    | 1 << features::VIRTIO_GPU_F_RESOURCE_UUID
    | 1 << features::VIRTIO_GPU_F_RESOURCE_BLOB;

/// The vhost-user backend: the device model plus per-connection state.
///
/// Each piece of state has its own lock rather than one around the whole
/// backend: the worker may block on the display socket while it holds the
/// device, waiting for QEMU, and QEMU may at the same time wait for us to
/// answer a config-space read. Config reads touch no lock, so that cannot
/// deadlock.
pub struct GpuBackendDevice {
    /// Shared with the control socket, which must reach the device while
    /// a request is delayed by fault injection.
    device: Arc<Mutex<Device>>,
    num_scanouts: u32,
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: AtomicBool,
    acked_features: Arc<AtomicU64>,
    /// Used by the one worker thread only.
    scratch: Mutex<Scratch>,
}

impl GpuBackendDevice {
    pub fn new(config: DeviceConfig) -> io::Result<Self> {
        let renderer = RutabagaRenderer::new().map_err(io::Error::other)?;
        let device = GpuDevice::new(config, renderer);
        Ok(GpuBackendDevice {
            num_scanouts: device.num_scanouts(),
            device: Arc::new(Mutex::new(device)),
            mem: Mutex::default(),
            event_idx: AtomicBool::new(false),
            acked_features: Arc::default(),
            scratch: Mutex::default(),
        })
    }

    /// The device model.
    pub fn device(&self) -> MutexGuard<'_, Device> {
        lock(&self.device)
    }

    /// What the control socket needs: the device and the negotiated
    /// features.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle {
            device: self.device.clone(),
            acked_features: self.acked_features.clone(),
        }
    }

    /// The frontend went away: free everything and forget its memory.
    pub fn disconnected(&self) {
        let mut device = self.device();
        device.reset();
        device.set_display(None);
        drop(device);
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.acked_features.store(0, Ordering::Relaxed);
        self.event_idx.store(false, Ordering::Relaxed);
    }

    fn process_queue(&self, vring: &VringRwLock, queue: u16) -> io::Result<()> {
        let atomic = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(atomic) = atomic else {
            warn!("queue {queue} kicked before the memory table was set");
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            self.drain_queue(vring, queue, &atomic)?;
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }

    fn drain_queue(
        &self,
        vring: &VringRwLock,
        queue: u16,
        atomic: &GuestMemoryAtomic<GuestMemory>,
    ) -> io::Result<()> {
        let mut completed = 0;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut device = lock(&self.device);
        loop {
            let mem = atomic.memory();
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let (used_len, delay) = handle_chain(&mut device, &mut scratch, &mem, chain, queue);
            if let Some(delay) = delay {
                // Injected delay: this completion (and every later one, the
                // queue being FIFO) reaches the guest that much later. The
                // device stays reachable from the control socket meanwhile.
                signal(vring, &mut completed)?;
                drop(device);
                std::thread::sleep(delay);
                device = lock(&self.device);
            }
            vring.add_used(head, used_len).map_err(io::Error::other)?;
            completed += 1;
        }
        signal(vring, &mut completed)
    }
}

/// The device and negotiated features, for the control socket.
#[derive(Clone)]
pub struct ControlHandle {
    device: Arc<Mutex<Device>>,
    acked_features: Arc<AtomicU64>,
}

impl ControlHandle {
    pub fn device(&self) -> MutexGuard<'_, Device> {
        lock(&self.device)
    }

    /// Virtio features the current frontend acked (0 when none is connected).
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }
}

fn lock(device: &Mutex<Device>) -> MutexGuard<'_, Device> {
    // A poisoned lock (a panic elsewhere) is taken over: the device's state
    // is consistent between requests.
    device.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(vring: &VringRwLock, completed: &mut usize) -> io::Result<()> {
    if *completed > 0 && vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    *completed = 0;
    Ok(())
}

/// Buffers reused across requests.
#[derive(Default)]
struct Scratch {
    request: Vec<u8>,
    response: Vec<u8>,
}

/// Largest request we read: an ATTACH_BACKING or CREATE_BLOB with the
/// maximum number of entries.
fn max_request_len(device: &Device) -> usize {
    size_of::<CtrlHeader>()
        + size_of::<ResourceCreateBlob>()
        + device.config().max_entries as usize * size_of::<MemEntry>()
}

/// Handles one descriptor chain; returns the bytes written into it and any
/// injected delay. A chain that is malformed or has no room for a response
/// is completed with 0 bytes: there is no way to answer it.
fn handle_chain(
    device: &mut Device,
    scratch: &mut Scratch,
    mem: &GuestMemoryLoadGuard<GuestMemory>,
    chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemory>>,
    queue: u16,
) -> (u32, Option<Duration>) {
    let reader = Reader::new(&**mem, chain.clone());
    let writer = Writer::new(&**mem, chain);
    let (mut reader, mut writer) = match (reader, writer) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            warn!("queue {queue}: dropping malformed descriptor chain: {e}");
            device.record_malformed(None, &DecodeError::Short { need: 0, have: 0 });
            return (0, None);
        }
    };

    let readable = reader.available_bytes();
    let limit = max_request_len(device);
    // The buffer only grows (zeroing megabytes for every large request
    // that follows a small one would cost more than reading them), and
    // `read_exact` overwrites the part used.
    let len = readable.min(limit);
    if scratch.request.len() < len {
        scratch.request.resize(len, 0);
    }
    let request = &mut scratch.request[..len];
    if let Err(e) = reader.read_exact(request) {
        warn!("queue {queue}: cannot read request: {e}");
        return (0, None);
    }

    let max_entries = device.config().max_entries;
    let decoded = if readable > limit {
        // Too large to be any valid request; answer from its header.
        let mut hdr = CtrlHeader::default();
        let hdr_len = size_of::<CtrlHeader>();
        let have_hdr = request.len() >= hdr_len;
        if have_hdr {
            hdr.as_mut_slice().copy_from_slice(&request[..hdr_len]);
        }
        let err = DecodeError::TooManyEntries {
            nr_entries: u32::try_from((readable - size_of::<CtrlHeader>()) / size_of::<MemEntry>())
                .unwrap_or(u32::MAX),
            max: max_entries,
        };
        Err((have_hdr.then_some(hdr), err))
    } else if queue == CURSOR_QUEUE {
        Request::decode_cursor(request)
    } else {
        Request::decode_ctrl(request, max_entries)
    };

    let (hdr, response, delay) = match decoded {
        Ok(req) => {
            let response = device.process(&req);
            let delay = device
                .faults()
                .delay_ms
                .get(&req.hdr.type_)
                .map(|&ms| Duration::from_millis(ms));
            (req.hdr, response, delay)
        }
        Err((hdr, err)) => {
            device.record_malformed(hdr.map(|h| h.type_), &err);
            let code = match err {
                DecodeError::TooManyEntries { .. } => ErrorCode::InvalidParameter,
                _ => ErrorCode::Unspec,
            };
            (hdr.unwrap_or_default(), Response::Err(code), None)
        }
    };

    response.encode(&hdr, &mut scratch.response);
    let room = writer.available_bytes();
    if room < scratch.response.len() {
        if room < size_of::<CtrlHeader>() {
            // Linux sends cursor commands without a response buffer; on the
            // control queue a missing one is a driver bug worth a warning.
            if queue == CURSOR_QUEUE {
                debug!(
                    "cursor {} without a response buffer",
                    ctrl_type::name(hdr.type_)
                );
            } else {
                warn!(
                    "queue {queue}: {} request has no room for a response ({room} writable bytes)",
                    ctrl_type::name(hdr.type_)
                );
            }
            return (0, delay);
        }
        warn!(
            "queue {queue}: {} response of {} bytes does not fit {room}; answering ERR_UNSPEC",
            ctrl_type::name(hdr.type_),
            scratch.response.len()
        );
        Response::Err(ErrorCode::Unspec).encode(&hdr, &mut scratch.response);
    }
    match writer.write_all(&scratch.response) {
        Ok(()) => (writer.bytes_written() as u32, delay),
        Err(e) => {
            warn!("queue {queue}: cannot write response: {e}");
            (0, delay)
        }
    }
}

impl VhostUserBackend for GpuBackendDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // RING_RESET: QEMU's virtio-pci offers it to the guest whatever the
        // backend says and passes the guest's ack on in SET_FEATURES, which
        // vhost-user-backend refuses for bits we did not offer. vhost-user
        // has no per-queue reset message; a queue reset stays inside QEMU
        // (and the Linux virtio-gpu driver never resets a queue).
        // No NOTIFY_ON_EMPTY: a legacy-only bit that a modern (VERSION_1)
        // device must not offer.
        1 << VIRTIO_F_RING_RESET
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | GPU_FEATURES
    }

    fn acked_features(&self, features: u64) {
        info!("frontend acked features {features:#x}");
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        info!("device reset: freeing every resource");
        self.device().reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = VirtioGpuConfig {
            events_read: 0,
            events_clear: 0,
            num_scanouts: self.num_scanouts,
            num_capsets: 0,
        };
        let bytes = config.as_slice();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only events_clear is writable, and this device raises no events.
        debug!("config write of {} bytes at {offset} ignored", buf.len());
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        // Under the device lock, so no request is in flight: the device
        // re-resolves every backing before the next one runs.
        let mut device = self.device();
        device.set_memory(mem.memory().into_inner());
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, socket: GpuBackend) -> io::Result<()> {
        info!("display socket connected");
        self.device()
            .set_display(Some(Box::new(SocketDisplay::new(socket))));
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|e| warn!("cannot create exit event: {e}"))
            .ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        match device_event {
            CONTROL_QUEUE | CURSOR_QUEUE => {
                let vring = vrings
                    .get(device_event as usize)
                    .ok_or_else(|| io::Error::other(format!("no vring {device_event}")))?;
                self.process_queue(vring, device_event)
            }
            other => Err(io::Error::other(format!("unknown device event {other}"))),
        }
    }
}
