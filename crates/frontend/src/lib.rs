//! An in-process vhost-user **frontend** for virtio-gpu: the part QEMU
//! plays, for driving any vhost-user-gpu backend over a real unix socket
//! from tests, property tests and benchmarks.
//!
//! - [`guest_ram`]: memfd-backed guest RAM regions shared with the backend,
//!   added and removed at run time, and a page allocator for test buffers.
//! - [`ring`]: the driver side of a split virtqueue.
//! - [`display`]: the frontend side of the vhost-user-gpu display protocol,
//!   recording what the backend shows.
//! - [`GpuFrontend`]: handshake, memory table, rings, request submission
//!   (blocking, pipelined, raw chains) and lifecycle.
//! - [`Commands`]: typed virtio-gpu commands, optionally fenced.
//!
//! ```no_run
//! use gpuswap_frontend::{FrontendConfig, GpuFrontend, Placement};
//! use gpuswap_protocol::{format, wire::Rect};
//!
//! let mut gpu = GpuFrontend::connect("/tmp/gpu.sock", FrontendConfig::default())?;
//! gpu.resource_create_2d(1, format::B8G8R8X8_UNORM, 64, 64)?;
//! let pages = gpu.ram_mut().alloc(4, Placement::Scattered)?;
//! gpu.attach_backing(1, &pages.entries())?;
//! gpu.transfer_to_host_2d(1, Rect { x: 0, y: 0, width: 64, height: 64 }, 0)?;
//! # Ok::<(), gpuswap_frontend::Error>(())
//! ```

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod commands;
pub mod display_server;
mod error;
pub mod frontend;
pub mod guest_ram;
pub mod ring;

pub use commands::{CapsetInfo, Commands, Fence};
pub use display_server::{DisplayConfig, DisplayEvent, DisplayHandle, Framebuffer, ScanoutMode};
pub use error::{Error, QueueId, Result};
pub use frontend::{Completion, FrontendConfig, GpuFrontend, Negotiated, Token};
pub use guest_ram::{GuestRam, Pages, Placement, RegionSpec, PAGE_SIZE};
pub use ring::RawDesc;
