//! vhost-user glue: feature negotiation, config space, memory table
//! updates, and moving requests between the virtqueues and the device
//! model.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpuswap_device::log_limit::LogLimit;
use gpuswap_device::{limited_warn, DeviceConfig, GpuDevice, RutabagaRenderer};
use gpuswap_protocol::wire::{CtrlHeader, MemEntry, ResourceCreateBlob, VirtioGpuConfig};
use gpuswap_protocol::{ctrl_type, features, DecodeError, ErrorCode, Request, Response};
use log::{debug, error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::GpuBackend;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{
    ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::poll::AdaptivePoll;
use crate::socket_display::SocketDisplay;

/// Guest memory as vhost-user-backend maps it.
pub type GuestMemory = GuestMemoryMmap<()>;
/// The device model as the daemon runs it.
pub type Device = GpuDevice<RutabagaRenderer, GuestMemory>;

/// The daemon's own fault knob: completion delays in ms by request type.
/// The device answers at once; the queue handler holds the completion
/// back (and every later one: the queue is FIFO), which widens the guest's
/// race windows without reordering fences.
pub type CompletionDelays = BTreeMap<u32, u64>;

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
pub struct VhostUserGpuBackend {
    /// Shared with the control socket, which must reach the device while
    /// a request is delayed by fault injection.
    device: Arc<Mutex<Device>>,
    /// Shared with the control socket, which arms them. Locked after the
    /// device, never before.
    delays: Arc<Mutex<CompletionDelays>>,
    num_scanouts: u32,
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: AtomicBool,
    acked_features: Arc<AtomicU64>,
    /// Used by the one worker thread only.
    scratch: Mutex<Scratch>,
    /// Adaptive polling of each queue (worker thread only).
    polls: Mutex<[AdaptivePoll; 2]>,
    /// Set when a ring can no longer be trusted; the queues are not served
    /// again until the frontend has gone.
    ring_broken: AtomicBool,
    /// Rings found broken since the daemon started (one per connection at
    /// most).
    ring_errors: Arc<AtomicU64>,
    /// Ends the current frontend connection.
    connection: Mutex<Option<ShutdownHandle>>,
}

/// Why a ring can no longer be trusted. Unlike a malformed chain, which
/// is answered and forgotten, these leave the device unable to tell which
/// chains the driver made available, so no later completion would mean
/// anything.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read the available ring: {0}")]
    Avail(virtio_queue::Error),
    #[error("available chain head {head} is outside the queue of {size}")]
    Head { head: u16, size: u16 },
    #[error("cannot complete chain {head}: {error}")]
    Used {
        head: u16,
        error: virtio_queue::Error,
    },
}

impl VhostUserGpuBackend {
    pub fn new(config: DeviceConfig) -> io::Result<Self> {
        let renderer = RutabagaRenderer::new().map_err(io::Error::other)?;
        let device = GpuDevice::new(config, renderer);
        Ok(VhostUserGpuBackend {
            num_scanouts: device.num_scanouts(),
            device: Arc::new(Mutex::new(device)),
            delays: Arc::default(),
            mem: Mutex::default(),
            event_idx: AtomicBool::new(false),
            acked_features: Arc::default(),
            scratch: Mutex::default(),
            polls: Mutex::new([
                AdaptivePoll::new(Duration::ZERO),
                AdaptivePoll::new(Duration::ZERO),
            ]),
            ring_broken: AtomicBool::new(false),
            ring_errors: Arc::default(),
            connection: Mutex::default(),
        })
    }

    /// Polls each queue's available ring for up to `max` after handling
    /// it before sleeping, while polling pays or `always` (see
    /// [`AdaptivePoll`]); zero (the default of a new device) never polls.
    pub fn set_poll_max(&self, max: Duration, always: bool) {
        let poll = || {
            let poll = AdaptivePoll::new(max);
            if always {
                poll.always()
            } else {
                poll
            }
        };
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        *polls = [poll(), poll()];
    }

    /// The connection now being served, which a broken ring ends.
    pub fn set_connection(&self, connection: Option<ShutdownHandle>) {
        let mut current = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        *current = connection;
        // A ring may have broken before the handle arrived.
        if self.ring_broken.load(Ordering::Acquire) {
            if let Some(connection) = current.as_ref() {
                connection.shutdown();
            }
        }
    }

    /// Stops serving the queues and ends the connection: the frontend (and
    /// whoever runs it) sees the backend go, and the daemon serves the next
    /// one. Reported once per connection.
    fn distrust_ring(&self, queue: u16, error: RingError) {
        if self.ring_broken.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ring_errors.fetch_add(1, Ordering::Relaxed);
        error!("queue {queue}: {error}; dropping the frontend connection");
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connection) = connection.as_ref() {
            connection.shutdown();
        }
    }

    /// The device model.
    pub fn device(&self) -> MutexGuard<'_, Device> {
        lock(&self.device)
    }

    /// The completion delays armed.
    pub fn delays(&self) -> MutexGuard<'_, CompletionDelays> {
        self.delays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How late the completion of a request of type `type_` goes out.
    fn delay_of(&self, type_: u32) -> Option<Duration> {
        self.delays()
            .get(&type_)
            .map(|&ms| Duration::from_millis(ms))
    }

    /// What the control socket needs: the device, the completion delays
    /// and the negotiated features.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle {
            device: self.device.clone(),
            delays: self.delays.clone(),
            acked_features: self.acked_features.clone(),
            ring_errors: self.ring_errors.clone(),
            fault_injection: false,
        }
    }

    /// The frontend went away: free everything and forget its memory.
    pub fn disconnected(&self) {
        let mut device = self.device();
        device.disconnect();
        device.set_display(None);
        drop(device);
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.acked_features.store(0, Ordering::Relaxed);
        self.event_idx.store(false, Ordering::Relaxed);
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.ring_broken.store(false, Ordering::Release);
        // The allocator keeps freed heap for the next attach (see
        // tune_allocator in main.rs); with the frontend gone, give it back.
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe { libc::malloc_trim(0) };
    }

    fn process_queue(&self, vring: &VringRwLock, queue: u16) -> io::Result<()> {
        let atomic = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(atomic) = atomic else {
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            limited_warn!(
                scratch.log_limit,
                "kick without memory",
                "queue {queue} kicked before the memory table was set"
            );
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        let poll = &mut polls[usize::from(queue == CURSOR_QUEUE)];
        poll.woken();
        let polling = !poll.window().is_zero();
        loop {
            if self.ring_broken.load(Ordering::Acquire) {
                return Ok(());
            }
            // Without EVENT_IDX notifications go off (VRING_USED_F_NO_NOTIFY)
            // only while polling: the flag costs a write per wakeup.
            if event_idx || polling {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            match self.drain_queue(vring, queue, &atomic)? {
                Ok(handled) => poll.handled(handled),
                Err(error) => {
                    self.distrust_ring(queue, error);
                    return Ok(());
                }
            }
            if poll.poll(|| has_available(vring, &atomic)) {
                continue;
            }
            poll.sleeping();
            if !(event_idx || polling) || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }

    /// Handles every available chain and returns how many; the inner error
    /// is a ring that can no longer be trusted (what was completed before
    /// it is signalled).
    fn drain_queue(
        &self,
        vring: &VringRwLock,
        queue: u16,
        atomic: &GuestMemoryAtomic<GuestMemory>,
    ) -> io::Result<Result<u64, RingError>> {
        let mut handled = 0;
        let mut completed = 0;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut device = lock(&self.device);
        loop {
            let mem = atomic.memory();
            let chain = match next_chain(vring, mem.clone()) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(error) => {
                    signal(vring, &mut completed)?;
                    return Ok(Err(error));
                }
            };
            let head = chain.head_index();
            let (used_len, processed) = handle_chain(&mut device, &mut scratch, &mem, chain, queue);
            if let Some(delay) = processed.and_then(|type_| self.delay_of(type_)) {
                // Injected delay: this completion (and every later one, the
                // queue being FIFO) reaches the guest that much later. The
                // device stays reachable from the control socket meanwhile.
                signal(vring, &mut completed)?;
                drop(device);
                std::thread::sleep(delay);
                device = lock(&self.device);
            }
            let used = vring
                .get_mut()
                .get_queue_mut()
                .add_used(&*mem, head, used_len);
            if let Err(error) = used {
                signal(vring, &mut completed)?;
                return Ok(Err(RingError::Used { head, error }));
            }
            completed += 1;
            handled += 1;
        }
        signal(vring, &mut completed)?;
        Ok(Ok(handled))
    }
}

/// Whether the driver has made a chain available that the device has not
/// taken yet. A ring that cannot be read counts as work: the next drain
/// finds out what is wrong with it.
fn has_available(vring: &VringRwLock, atomic: &GuestMemoryAtomic<GuestMemory>) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(&*atomic.memory(), Ordering::Acquire)
            .map_or(true, |idx| idx != Wrapping(queue.next_avail()))
}

/// The next available chain, or why the ring cannot be trusted.
fn next_chain(
    vring: &VringRwLock,
    mem: GuestMemoryLoadGuard<GuestMemory>,
) -> Result<Option<DescriptorChain<GuestMemoryLoadGuard<GuestMemory>>>, RingError> {
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    // The frontend may stop the ring (GET_VRING_BASE, RESET_DEVICE) while
    // the worker drains or polls it: a ring that is not set up has nothing
    // to take, and nothing in it to distrust.
    if !queue.ready() {
        return Ok(None);
    }
    let size = queue.size();
    // `iter` refuses an available index more than a queue size ahead of
    // the device's (the driver cannot have made that many chains available).
    let chain = queue.iter(mem).map_err(RingError::Avail)?.next();
    match chain {
        Some(chain) if chain.head_index() >= size => Err(RingError::Head {
            head: chain.head_index(),
            size,
        }),
        chain => Ok(chain),
    }
}

/// The device, the completion delays and the negotiated features, for the
/// control socket.
#[derive(Clone)]
pub struct ControlHandle {
    device: Arc<Mutex<Device>>,
    delays: Arc<Mutex<CompletionDelays>>,
    acked_features: Arc<AtomicU64>,
    ring_errors: Arc<AtomicU64>,
    fault_injection: bool,
}

impl ControlHandle {
    pub fn device(&self) -> MutexGuard<'_, Device> {
        lock(&self.device)
    }

    /// The completion delays (take the device first when both are needed).
    pub fn delays(&self) -> MutexGuard<'_, CompletionDelays> {
        self.delays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Virtio features the current frontend acked (0 when none is connected).
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// Rings found broken since the daemon started.
    pub fn ring_errors(&self) -> u64 {
        self.ring_errors.load(Ordering::Relaxed)
    }

    /// Lets clients change fault injection (off unless whoever started
    /// the daemon asked for it).
    pub fn with_fault_injection(self, allowed: bool) -> Self {
        ControlHandle {
            fault_injection: allowed,
            ..self
        }
    }

    /// Whether clients may change fault injection.
    pub fn fault_injection(&self) -> bool {
        self.fault_injection
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

/// Buffers reused across requests, and the worker's log limits.
#[derive(Default)]
struct Scratch {
    request: Vec<u8>,
    response: Vec<u8>,
    log_limit: LogLimit,
}

/// Largest request we read: an ATTACH_BACKING or CREATE_BLOB with the
/// maximum number of entries.
fn max_request_len(device: &Device) -> usize {
    size_of::<CtrlHeader>()
        + size_of::<ResourceCreateBlob>()
        + device.config().max_entries as usize * size_of::<MemEntry>()
}

/// Handles one descriptor chain; returns the bytes written into it and the
/// type of the request the device processed, if it did (for its completion
/// delay). A chain that is malformed or has no room for a response is
/// completed with 0 bytes: there is no way to answer it.
fn handle_chain(
    device: &mut Device,
    scratch: &mut Scratch,
    mem: &GuestMemoryLoadGuard<GuestMemory>,
    chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemory>>,
    queue: u16,
) -> (u32, Option<u32>) {
    let reader = Reader::new(&**mem, chain.clone());
    let writer = Writer::new(&**mem, chain);
    let (mut reader, mut writer) = match (reader, writer) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            limited_warn!(
                scratch.log_limit,
                "malformed chain",
                "queue {queue}: dropping malformed descriptor chain: {e}"
            );
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
        limited_warn!(
            scratch.log_limit,
            "unreadable request",
            "queue {queue}: cannot read request: {e}"
        );
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

    let (hdr, response, processed) = match decoded {
        Ok(req) => {
            let hdr = req.hdr;
            let response = device.process(req);
            (hdr, response, Some(hdr.type_))
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
                limited_warn!(
                    scratch.log_limit,
                    "no response buffer",
                    "queue {queue}: {} request has no room for a response ({room} writable bytes)",
                    ctrl_type::name(hdr.type_)
                );
            }
            return (0, processed);
        }
        limited_warn!(
            scratch.log_limit,
            "short response buffer",
            "queue {queue}: {} response of {} bytes does not fit {room}; answering ERR_UNSPEC",
            ctrl_type::name(hdr.type_),
            scratch.response.len()
        );
        Response::Err(ErrorCode::Unspec).encode(&hdr, &mut scratch.response);
    }
    match writer.write_all(&scratch.response) {
        Ok(()) => (writer.bytes_written() as u32, processed),
        Err(e) => {
            limited_warn!(
                scratch.log_limit,
                "unwritable response",
                "queue {queue}: cannot write response: {e}"
            );
            (0, processed)
        }
    }
}

impl VhostUserBackend for VhostUserGpuBackend {
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
