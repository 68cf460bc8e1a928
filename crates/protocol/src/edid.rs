//! A minimal EDID 1.4 block, so the guest sees a scanout's resolution as
//! its preferred mode: what the device answers GET_EDID with for a headless
//! scanout, and what the test frontend's display peer hands out.

/// Length of a base EDID block.
pub const EDID_LEN: usize = 128;

/// An EDID with one detailed timing for `width` x `height` at 60 Hz
/// (reduced blanking), named "gpuswap". Sizes above what a detailed timing
/// can express (4095) are clamped.
pub fn generate(width: u32, height: u32) -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "GSW": three 5-bit letters, big-endian.
    let letter = |c: u8| u16::from(c - b'@');
    let vendor = (letter(b'G') << 10) | (letter(b'S') << 5) | letter(b'W');
    e[8..10].copy_from_slice(&vendor.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[17] = 36; // year of manufacture - 1990
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital input, 8 bits per colour, DisplayPort
    e[23] = 0x78; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing is native
                  // sRGB chromaticity coordinates.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // No standard timings.
    for slot in e[38..54].chunks_exact_mut(2) {
        slot.copy_from_slice(&[0x01, 0x01]);
    }
    e[54..72].copy_from_slice(&detailed_timing(width.min(4095), height.min(4095)));
    // Display name descriptor.
    let mut name = [0x20u8; 13];
    name[..8].copy_from_slice(b"gpuswap\n");
    e[72..77].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    e[77..90].copy_from_slice(&name);
    // Two dummy descriptors.
    e[93] = 0x10;
    e[111] = 0x10;
    let sum = e[..127].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn detailed_timing(width: u32, height: u32) -> [u8; 18] {
    const H_BLANK: u32 = 160;
    const H_FRONT: u32 = 48;
    const H_SYNC: u32 = 32;
    const V_BLANK: u32 = 35;
    const V_FRONT: u32 = 3;
    const V_SYNC: u32 = 6;
    // Pixel clock in 10 kHz units; fits 16 bits for up to 4095x4095@60.
    let clock = (width + H_BLANK) * (height + V_BLANK) * 60 / 10_000;
    let mut d = [0u8; 18];
    d[0..2].copy_from_slice(&(clock.min(0xffff) as u16).to_le_bytes());
    d[2] = width as u8;
    d[3] = H_BLANK as u8;
    d[4] = (((width >> 8) & 0xf) << 4 | ((H_BLANK >> 8) & 0xf)) as u8;
    d[5] = height as u8;
    d[6] = V_BLANK as u8;
    d[7] = (((height >> 8) & 0xf) << 4 | ((V_BLANK >> 8) & 0xf)) as u8;
    d[8] = H_FRONT as u8;
    d[9] = H_SYNC as u8;
    d[10] = ((V_FRONT & 0xf) << 4 | (V_SYNC & 0xf)) as u8;
    d[17] = 0x18; // digital separate sync
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_and_preferred_mode() {
        let e = generate(1280, 800);
        assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let w = u32::from(e[56]) | (u32::from(e[58] >> 4) << 8);
        let h = u32::from(e[59]) | (u32::from(e[61] >> 4) << 8);
        assert_eq!((w, h), (1280, 800));
    }
}
