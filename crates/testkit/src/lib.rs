//! Support shared by the integration tests, the benchmarks and the
//! end-to-end harness, so that each of them does not grow its own copy.
//!
//! - [`Process`]: a child (daemon, backend, VMM) whose stdout and stderr go
//!   to a log file, which can be waited for with a deadline, and which is
//!   killed and reaped when dropped, so that a failing test leaves nothing
//!   running.
//! - [`ScratchDir`]: a fresh directory for a child's sockets and log,
//!   removed on drop.
//! - [`poll_until`] (and [`poll_every`], its period chosen) and
//!   [`wait_for_path`]: the one wait-with-a-deadline loop.
//! - [`Rng`] and [`pattern`]: the deterministic PRNG (SplitMix64) for test
//!   data, random choices and benchmark content.
//! - [`ControlClient`] (feature `control`): the typed client of the
//!   daemon's control socket.
//! - [`model`] (feature `model`): the reference model of the
//!   resource/backing state machine that the device-level and the
//!   socket-level property tests both check against.

#[cfg(feature = "control")]
mod control;
#[cfg(feature = "model")]
pub mod model;
mod process;
mod rng;

#[cfg(feature = "control")]
pub use control::{ControlClient, ControlError, ControlResult};
pub use process::{poll_every, poll_until, wait_for_path, Process, ScratchDir};
pub use rng::{pattern, Rng};
