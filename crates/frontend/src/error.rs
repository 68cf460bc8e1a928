//! The error type of the frontend.

use std::io;
use std::time::Duration;

use gpuswap_protocol::ErrorCode;

/// Which virtqueue of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueId {
    /// The control queue (virtqueue 0).
    Control,
    /// The cursor queue (virtqueue 1).
    Cursor,
}

impl QueueId {
    /// The vhost-user vring index of this queue.
    pub fn index(self) -> usize {
        match self {
            QueueId::Control => 0,
            QueueId::Cursor => 1,
        }
    }
}

/// Everything that can go wrong while driving a backend.
///
/// A misbehaving backend shows up as an error value, never as a panic:
/// [`Error::Device`] is a well-formed error response, every other variant is
/// a transport, setup or protocol failure.
/// Variant fields are described by the variant's message.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum Error {
    /// The backend answered a request with an error response.
    #[error("device error response {0}")]
    Device(ErrorCode),
    /// Connecting to the backend's socket failed.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed (transport error or negative ack).
    #[error("vhost-user {op} failed: {source}")]
    VhostUser {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something the frontend needs.
    #[error("backend does not support {0}")]
    Unsupported(&'static str),
    /// A socket or eventfd operation failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be created, mapped or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest page allocator cannot satisfy a request.
    #[error("out of guest pages: wanted {wanted} ({placement}), {free} free")]
    OutOfPages {
        wanted: u64,
        free: u64,
        placement: &'static str,
    },
    /// A guest-memory region request is invalid (overlap, unknown, busy).
    #[error("guest memory region: {0}")]
    Region(String),
    /// The ring has not enough free descriptors for a chain.
    #[error("{queue:?} queue: chain of {needed} descriptors, {free} free")]
    RingFull {
        queue: QueueId,
        needed: usize,
        free: usize,
    },
    /// A descriptor chain is malformed before it is even queued.
    #[error("invalid descriptor chain: {0}")]
    InvalidChain(&'static str),
    /// No completion arrived within the timeout.
    #[error("{queue:?} queue: no completion within {waited:?} ({in_flight} in flight)")]
    Timeout {
        queue: QueueId,
        waited: Duration,
        in_flight: usize,
    },
    /// The backend closed the vhost-user connection (or died) while a
    /// completion was awaited.
    #[error("{queue:?} queue: backend disconnected ({in_flight} in flight)")]
    Disconnected { queue: QueueId, in_flight: usize },
    /// The queue has nothing in flight to wait for.
    #[error("{0:?} queue: nothing in flight")]
    NothingInFlight(QueueId),
    /// The rings are stopped (after [`crate::GpuFrontend::stop`]).
    #[error("rings are stopped")]
    Stopped,
    /// The backend broke the virtio or vhost-user protocol.
    #[error("backend misbehaved: {0}")]
    Backend(String),
    /// A response is shorter than its type needs.
    #[error("response of {got} bytes, {need} needed for type {type_:#x}")]
    ShortResponse { type_: u32, need: usize, got: usize },
    /// A response has a type the request cannot produce.
    #[error("unexpected response type {got:#x}, expected {expected:#x}")]
    UnexpectedResponse { expected: u32, got: u32 },
    /// A fenced request's response does not echo the fence.
    #[error("fence not echoed: sent {sent:?}, got flags {flags:#x} fence {fence_id} ctx {ctx_id} ring {ring_idx}")]
    FenceMismatch {
        sent: crate::Fence,
        flags: u32,
        fence_id: u64,
        ctx_id: u32,
        ring_idx: u8,
    },
    /// The display channel failed.
    #[error("display channel: {0}")]
    Display(String),
}

impl Error {
    /// The device error code, if this is an error response.
    pub fn device_error(&self) -> Option<ErrorCode> {
        match self {
            Error::Device(code) => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn vu(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        move |source| Error::VhostUser { op, source }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }

    pub(crate) fn nix(op: &'static str) -> impl FnOnce(nix::Error) -> Error {
        move |e| Error::Io {
            op,
            source: io::Error::from(e),
        }
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Error::Device(code)
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
