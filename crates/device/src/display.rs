//! The display seam: where scanout contents and the cursor go. The daemon
//! implements it over the vhost-user-gpu display socket; without one the
//! device runs headless.

use crate::renderer::Rect2d;

/// Cursor images are 64x64 pixels of 4 bytes.
pub const CURSOR_SIZE: u32 = 64;

/// A scanout's mode as the display reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayMode {
    pub width: u32,
    pub height: u32,
    pub enabled: bool,
}

/// A display the device model shows scanouts and the cursor on.
pub trait Display: Send {
    /// The current modes, one per scanout, or `None` to use the defaults.
    fn display_info(&mut self) -> Option<Vec<DisplayMode>>;

    /// The display's EDID for `scanout`, or `None` to use a generated one.
    fn edid(&mut self, scanout: u32) -> Option<Vec<u8>>;

    /// Scanout `scanout` now shows a `width` x `height` image (0 x 0:
    /// disabled).
    fn scanout(&mut self, scanout: u32, width: u32, height: u32);

    /// New pixels for `rect` of a scanout, rows of `rect.width * 4` bytes.
    fn update(&mut self, scanout: u32, rect: Rect2d, pixels: &[u8]);

    /// A new cursor image (`CURSOR_SIZE` squared pixels) at (`x`, `y`).
    fn cursor_update(&mut self, scanout: u32, x: u32, y: u32, hot_x: u32, hot_y: u32, image: &[u8]);

    /// The cursor moved.
    fn cursor_move(&mut self, scanout: u32, x: u32, y: u32);

    /// The cursor is hidden.
    fn cursor_hide(&mut self, scanout: u32);
}
