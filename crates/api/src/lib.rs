//! The two JSON-lines protocols of gpuswap, as types both ends use:
//!
//! - [`control`]: the daemon's control socket (`gpuswap-daemon
//!   --control-socket`), served by `crates/daemon/src/control.rs`, read by
//!   the typed client of `gpuswap-testkit` (daemon tests, harness).
//! - [`agent`]: the guest agent (`gpuswap-guest agent` on a virtio-serial
//!   port), served by `crates/guest/src/agent.rs`, read by the harness's
//!   `Agent` client.
//!
//! Requests are enums tagged by `cmd` (control) or `op` (agent) that the
//! servers deserialize; replies are structs with the fields of the reply
//! line besides `ok` (and the agent's `id`). Only serde and serde_json: no
//! I/O, so the static guest binary stays small.

pub mod agent;
pub mod control;

/// A hash (xxh3-64) as both protocols print it: 16 hex digits, as in the
/// control socket's `host_hash` and `backing_hash` and the agent's `hash`.
pub fn hex(hash: u64) -> String {
    format!("{hash:016x}")
}
