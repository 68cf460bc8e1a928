//! gpuswap's virtio-gpu device model.
//!
//! [`GpuDevice`] owns the resource table and the exact backing state
//! machine of `../shared/DESIGN.md`:
//!
//! ```text
//!            ATTACH(entries)             DETACH / evict
//!  Detached ────────────────► Attached(g) ───────────────► Detached
//!     ▲   (generation g+1)                                    │
//!     └──────────────────────── UNREF (implicit detach) ◄─────┘
//! ```
//!
//! Double attach, detach while detached, and use of a detached resource
//! are answered with an error, change nothing, and are recorded as
//! violations in the [`trace`]. Rendering goes through the [`Renderer`]
//! seam (rutabaga's 2D component in production) and pixels leave through
//! the [`Display`] seam; the device knows nothing of vhost-user nor of who
//! inspects it: [`GpuDevice::snapshot`] and [`GpuDevice::read_host_band`]
//! give typed data, which the daemon's control socket formats and hashes.

pub mod display;
mod gpu_device;
pub mod log_limit;
pub mod memory;
pub mod renderer;
pub mod trace;

pub use display::{Display, DisplayMode};
pub use gpu_device::{
    DeviceConfig, Faults, GpuDevice, ResourceKind, ResourceSnapshot, ENTRY_OVERHEAD,
    RESOURCE_OVERHEAD,
};
pub use memory::BackingError;
pub use renderer::{HostIovec, Rect2d, Renderer, RendererError, RutabagaRenderer};
