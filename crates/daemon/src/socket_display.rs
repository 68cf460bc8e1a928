//! The device model's display seam over the vhost-user-gpu display socket
//! (QEMU's `docs/interop/vhost-user-gpu.rst`): the backend sends scanout,
//! update and cursor messages to the frontend, which shows them.

use gpuswap_device::{Display, DisplayMode, Rect2d};
use log::warn;
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuEdidRequest, VhostUserGpuScanout,
    VhostUserGpuUpdate,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

/// The frontend's display, reached over the socket from GPU_SET_SOCKET.
pub struct SocketDisplay {
    socket: GpuBackend,
    /// Whether the display protocol features were negotiated yet.
    negotiated: bool,
    edid: bool,
    /// Set after the first send error, so a dead socket logs once.
    broken: bool,
}

/// `VHOST_USER_GPU_PROTOCOL_F_EDID` is bit 0. vhost 0.18's
/// `VhostUserGpuProtocolFeatures::EDID` is declared with the *value* 0 (and
/// DMABUF2 with 1, EDID's bit), so it cannot serve as a mask: with it the
/// daemon never enabled EDID yet sent GET_EDID to every display.
const PROTOCOL_F_EDID: u64 = 1 << 0;

impl SocketDisplay {
    /// Wraps a fresh display socket. Nothing is sent yet: QEMU hands the
    /// socket over in a GPU_SET_SOCKET it waits to be acked, and answers
    /// display messages only after that, so negotiating here would
    /// deadlock. The first display call negotiates instead.
    pub fn new(socket: GpuBackend) -> Self {
        SocketDisplay {
            socket,
            negotiated: false,
            edid: false,
            broken: false,
        }
    }

    fn negotiate(&mut self) {
        if self.negotiated {
            return;
        }
        self.negotiated = true;
        let offered = self
            .socket
            .get_protocol_features()
            .map(|f| f.value)
            .unwrap_or_else(|e| {
                warn!("display socket: cannot read protocol features: {e}");
                0
            });
        // EDID is the only display feature we use; DMABUF2 needs dma-bufs,
        // which a shmem-backed 2D renderer does not have.
        let wanted = offered & PROTOCOL_F_EDID;
        if let Err(e) = self
            .socket
            .set_protocol_features(&VhostUserU64::new(wanted))
        {
            warn!("display socket: cannot set protocol features: {e}");
        }
        self.edid = wanted & PROTOCOL_F_EDID != 0;
    }

    fn check(&mut self, what: &str, result: std::io::Result<()>) {
        if let Err(e) = result {
            if !self.broken {
                warn!("display socket: {what} failed: {e}; further errors are not logged");
            }
            self.broken = true;
        }
    }
}

impl Display for SocketDisplay {
    fn display_info(&mut self) -> Option<Vec<DisplayMode>> {
        self.negotiate();
        match self.socket.get_display_info() {
            Ok(info) => Some(
                info.pmodes
                    .iter()
                    .map(|m| DisplayMode {
                        width: m.r.width,
                        height: m.r.height,
                        enabled: m.enabled != 0,
                    })
                    .collect(),
            ),
            Err(e) => {
                warn!("display socket: GET_DISPLAY_INFO failed: {e}");
                None
            }
        }
    }

    fn edid(&mut self, scanout: u32) -> Option<Vec<u8>> {
        self.negotiate();
        if !self.edid {
            return None;
        }
        let request = VhostUserGpuEdidRequest {
            scanout_id: scanout,
        };
        match self.socket.get_edid(&request) {
            Ok(resp) => {
                let len = (resp.size as usize).min(resp.edid.len());
                Some(resp.edid[..len].to_vec())
            }
            Err(e) => {
                warn!("display socket: GET_EDID failed: {e}");
                None
            }
        }
    }

    fn scanout(&mut self, scanout: u32, width: u32, height: u32) {
        self.negotiate();
        let msg = VhostUserGpuScanout {
            scanout_id: scanout,
            width,
            height,
        };
        let result = self.socket.set_scanout(&msg);
        self.check("SCANOUT", result);
    }

    fn update(&mut self, scanout: u32, rect: Rect2d, pixels: &[u8]) {
        self.negotiate();
        let msg = VhostUserGpuUpdate {
            scanout_id: scanout,
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        };
        let result = self.socket.update_scanout(&msg, pixels);
        self.check("UPDATE", result);
    }

    fn cursor_update(
        &mut self,
        scanout: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image: &[u8],
    ) {
        self.negotiate();
        let Ok(image) = image.try_into() else {
            warn!("display socket: cursor image of {} bytes", image.len());
            return;
        };
        let msg = VhostUserGpuCursorUpdate {
            pos: VhostUserGpuCursorPos {
                scanout_id: scanout,
                x,
                y,
            },
            hot_x,
            hot_y,
        };
        let result = self.socket.cursor_update(&msg, image);
        self.check("CURSOR_UPDATE", result);
    }

    fn cursor_move(&mut self, scanout: u32, x: u32, y: u32) {
        self.negotiate();
        let msg = VhostUserGpuCursorPos {
            scanout_id: scanout,
            x,
            y,
        };
        let result = self.socket.cursor_pos(&msg);
        self.check("CURSOR_POS", result);
    }

    fn cursor_hide(&mut self, scanout: u32) {
        self.negotiate();
        let msg = VhostUserGpuCursorPos {
            scanout_id: scanout,
            x: 0,
            y: 0,
        };
        let result = self.socket.cursor_pos_hide(&msg);
        self.check("CURSOR_POS_HIDE", result);
    }
}
