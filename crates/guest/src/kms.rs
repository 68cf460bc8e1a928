//! KMS basics (include/uapi/drm/drm_mode.h): dumb buffers, mode resources,
//! connectors/encoders/CRTCs, framebuffers and SETCRTC to keep a BO on scanout.

use crate::drm::Card;
use crate::error::{Error, Result};
use crate::uapi;

/// A dumb buffer as DRM_IOCTL_MODE_CREATE_DUMB returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dumb {
    pub handle: u32,
    pub pitch: u32,
    pub size: u64,
}

/// DRM_IOCTL_MODE_CREATE_DUMB (32 bpp: virtio-gpu accepts nothing else).
pub fn create_dumb(card: &Card, width: u32, height: u32) -> Result<Dumb> {
    let mut arg = uapi::drm_mode_create_dumb {
        width,
        height,
        bpp: 32,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_CREATE_DUMB",
            uapi::drm_ioctl_mode_create_dumb,
            &mut arg,
        )?
    };
    Ok(Dumb {
        handle: arg.handle,
        pitch: arg.pitch,
        size: arg.size,
    })
}

/// DRM_IOCTL_MODE_MAP_DUMB: the fake mmap offset of a dumb buffer.
pub fn map_dumb(card: &Card, handle: u32) -> Result<u64> {
    let mut arg = uapi::drm_mode_map_dumb {
        handle,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_MAP_DUMB",
            uapi::drm_ioctl_mode_map_dumb,
            &mut arg,
        )?
    };
    Ok(arg.offset)
}

/// DRM_IOCTL_MODE_DESTROY_DUMB (same effect as GEM_CLOSE on the handle).
pub fn destroy_dumb(card: &Card, handle: u32) -> Result<()> {
    let mut arg = uapi::drm_mode_destroy_dumb { handle };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_DESTROY_DUMB",
            uapi::drm_ioctl_mode_destroy_dumb,
            &mut arg,
        )
    }
}

/// Object ids from DRM_IOCTL_MODE_GETRESOURCES.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub fbs: Vec<u32>,
    pub crtcs: Vec<u32>,
    pub connectors: Vec<u32>,
    pub encoders: Vec<u32>,
    pub max_width: u32,
    pub max_height: u32,
}

/// Retries of the count-then-fill ioctls if hotplug changes the counts between calls.
const FILL_RETRIES: usize = 5;

/// DRM_IOCTL_MODE_GETRESOURCES (count, allocate, fill).
pub fn get_resources(card: &Card) -> Result<Resources> {
    for _ in 0..FILL_RETRIES {
        let mut counts = uapi::drm_mode_card_res::default();
        // SAFETY: all array pointers are null with zero counts: the kernel only
        // writes the counts back.
        unsafe {
            card.ioctl(
                "DRM_IOCTL_MODE_GETRESOURCES",
                uapi::drm_ioctl_mode_getresources,
                &mut counts,
            )?
        };
        let mut r = Resources {
            fbs: vec![0; counts.count_fbs as usize],
            crtcs: vec![0; counts.count_crtcs as usize],
            connectors: vec![0; counts.count_connectors as usize],
            encoders: vec![0; counts.count_encoders as usize],
            max_width: counts.max_width,
            max_height: counts.max_height,
        };
        let mut arg = uapi::drm_mode_card_res {
            fb_id_ptr: r.fbs.as_mut_ptr() as u64,
            crtc_id_ptr: r.crtcs.as_mut_ptr() as u64,
            connector_id_ptr: r.connectors.as_mut_ptr() as u64,
            encoder_id_ptr: r.encoders.as_mut_ptr() as u64,
            ..counts
        };
        // SAFETY: each pointer addresses a live Vec<u32> with exactly the count
        // passed next to it; the kernel writes at most `count` u32s to each.
        unsafe {
            card.ioctl(
                "DRM_IOCTL_MODE_GETRESOURCES",
                uapi::drm_ioctl_mode_getresources,
                &mut arg,
            )?
        };
        if arg.count_fbs == counts.count_fbs
            && arg.count_crtcs == counts.count_crtcs
            && arg.count_connectors == counts.count_connectors
            && arg.count_encoders == counts.count_encoders
        {
            return Ok(r);
        }
    }
    Err(Error::msg(
        "DRM_IOCTL_MODE_GETRESOURCES: counts kept changing",
    ))
}

/// A connector and its modes (DRM_IOCTL_MODE_GETCONNECTOR).
#[derive(Debug, Clone)]
pub struct Connector {
    pub id: u32,
    pub connected: bool,
    pub encoder_id: u32,
    pub encoders: Vec<u32>,
    pub modes: Vec<uapi::drm_mode_modeinfo>,
}

/// DRM_IOCTL_MODE_GETCONNECTOR (count, allocate, fill; properties not fetched).
pub fn get_connector(card: &Card, id: u32) -> Result<Connector> {
    for _ in 0..FILL_RETRIES {
        let mut counts = uapi::drm_mode_get_connector {
            connector_id: id,
            ..Default::default()
        };
        // SAFETY: all array pointers are null with zero counts.
        unsafe {
            card.ioctl(
                "DRM_IOCTL_MODE_GETCONNECTOR",
                uapi::drm_ioctl_mode_getconnector,
                &mut counts,
            )?
        };
        let mut modes = vec![uapi::drm_mode_modeinfo::default(); counts.count_modes as usize];
        let mut encoders = vec![0u32; counts.count_encoders as usize];
        let mut arg = uapi::drm_mode_get_connector {
            connector_id: id,
            modes_ptr: modes.as_mut_ptr() as u64,
            count_modes: counts.count_modes,
            encoders_ptr: encoders.as_mut_ptr() as u64,
            count_encoders: counts.count_encoders,
            ..Default::default()
        };
        // SAFETY: `modes`/`encoders` are live and sized to the counts passed;
        // count_props is 0 so the (null) property pointers are not written.
        unsafe {
            card.ioctl(
                "DRM_IOCTL_MODE_GETCONNECTOR",
                uapi::drm_ioctl_mode_getconnector,
                &mut arg,
            )?
        };
        if arg.count_modes == counts.count_modes && arg.count_encoders == counts.count_encoders {
            return Ok(Connector {
                id,
                connected: arg.connection == uapi::DRM_MODE_CONNECTED,
                encoder_id: arg.encoder_id,
                encoders,
                modes,
            });
        }
    }
    Err(Error::msg(
        "DRM_IOCTL_MODE_GETCONNECTOR: counts kept changing",
    ))
}

/// DRM_IOCTL_MODE_GETENCODER.
pub fn get_encoder(card: &Card, id: u32) -> Result<uapi::drm_mode_get_encoder> {
    let mut arg = uapi::drm_mode_get_encoder {
        encoder_id: id,
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_GETENCODER",
            uapi::drm_ioctl_mode_getencoder,
            &mut arg,
        )?
    };
    Ok(arg)
}

/// DRM_IOCTL_MODE_GETCRTC.
pub fn get_crtc(card: &Card, id: u32) -> Result<uapi::drm_mode_crtc> {
    let mut arg = uapi::drm_mode_crtc {
        crtc_id: id,
        ..Default::default()
    };
    // SAFETY: set_connectors_ptr is null with count 0 (only read by SETCRTC anyway).
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_GETCRTC",
            uapi::drm_ioctl_mode_getcrtc,
            &mut arg,
        )?
    };
    Ok(arg)
}

/// DRM_IOCTL_MODE_ADDFB2 for a single-plane XRGB8888 buffer.
pub fn add_fb2_xrgb8888(
    card: &Card,
    handle: u32,
    width: u32,
    height: u32,
    pitch: u32,
) -> Result<u32> {
    let mut arg = uapi::drm_mode_fb_cmd2 {
        width,
        height,
        pixel_format: uapi::DRM_FORMAT_XRGB8888,
        handles: [handle, 0, 0, 0],
        pitches: [pitch, 0, 0, 0],
        ..Default::default()
    };
    // SAFETY: no embedded user pointers.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_ADDFB2",
            uapi::drm_ioctl_mode_addfb2,
            &mut arg,
        )?
    };
    Ok(arg.fb_id)
}

/// DRM_IOCTL_MODE_RMFB (disables any CRTC still showing it).
pub fn rm_fb(card: &Card, fb_id: u32) -> Result<()> {
    let mut arg = fb_id;
    // SAFETY: the argument is a plain u32.
    unsafe { card.ioctl("DRM_IOCTL_MODE_RMFB", uapi::drm_ioctl_mode_rmfb, &mut arg) }
}

/// DRM_IOCTL_MODE_SETCRTC: show `fb_id` on `crtc_id` through `connector_id`
/// with `mode`; `fb_id == 0` with no connector/mode turns the CRTC off.
/// Needs DRM master (the first opener of the card node is master).
pub fn set_crtc(
    card: &Card,
    crtc_id: u32,
    fb_id: u32,
    connector_id: Option<u32>,
    mode: Option<uapi::drm_mode_modeinfo>,
) -> Result<()> {
    let mut connectors = [connector_id.unwrap_or(0)];
    let mut arg = uapi::drm_mode_crtc {
        crtc_id,
        fb_id,
        ..Default::default()
    };
    if let (Some(_), Some(mode)) = (connector_id, mode) {
        arg.set_connectors_ptr = connectors.as_mut_ptr() as u64;
        arg.count_connectors = 1;
        arg.mode = mode;
        arg.mode_valid = 1;
    }
    // SAFETY: set_connectors_ptr is either null (count 0) or points to the live
    // one-element `connectors` array (count 1), which the kernel only reads.
    unsafe {
        card.ioctl(
            "DRM_IOCTL_MODE_SETCRTC",
            uapi::drm_ioctl_mode_setcrtc,
            &mut arg,
        )
    }
}

/// Display name of a mode ("1024x768").
pub fn mode_name(mode: &uapi::drm_mode_modeinfo) -> String {
    format!("{}x{}", mode.hdisplay, mode.vdisplay)
}

/// A pipe that can show a framebuffer: connector, CRTC and a mode.
#[derive(Debug, Clone)]
pub struct Pipe {
    pub connector_id: u32,
    pub crtc_id: u32,
    pub mode: uapi::drm_mode_modeinfo,
}

/// Pick the first connected connector with a mode no larger than
/// `width`x`height` (the preferred mode if it fits, else the largest that
/// fits), and a CRTC for it (the encoder's current CRTC or the first possible).
pub fn pick_pipe(card: &Card, width: u32, height: u32) -> Result<Pipe> {
    let res = get_resources(card)?;
    let mut why = Vec::new();
    for &conn_id in &res.connectors {
        let conn = get_connector(card, conn_id)?;
        if !conn.connected {
            why.push(format!("connector {conn_id}: not connected"));
            continue;
        }
        let fits = |m: &&uapi::drm_mode_modeinfo| {
            u32::from(m.hdisplay) <= width && u32::from(m.vdisplay) <= height
        };
        let mode = conn
            .modes
            .iter()
            .filter(fits)
            .find(|m| m.type_ & uapi::DRM_MODE_TYPE_PREFERRED != 0)
            .or_else(|| {
                conn.modes
                    .iter()
                    .filter(fits)
                    .max_by_key(|m| u32::from(m.hdisplay) * u32::from(m.vdisplay))
            });
        let Some(mode) = mode else {
            let all: Vec<String> = conn.modes.iter().map(mode_name).collect();
            why.push(format!(
                "connector {conn_id}: no mode fits {width}x{height} (modes: {})",
                all.join(" ")
            ));
            continue;
        };
        let mut encoder_ids = conn.encoders.clone();
        if conn.encoder_id != 0 {
            encoder_ids.insert(0, conn.encoder_id);
        }
        for enc_id in encoder_ids {
            let enc = get_encoder(card, enc_id)?;
            let crtc_id = if enc.crtc_id != 0 {
                Some(enc.crtc_id)
            } else {
                res.crtcs
                    .iter()
                    .enumerate()
                    .find(|(i, _)| *i < 32 && enc.possible_crtcs & (1 << i) != 0)
                    .map(|(_, &c)| c)
            };
            if let Some(crtc_id) = crtc_id {
                return Ok(Pipe {
                    connector_id: conn_id,
                    crtc_id,
                    mode: *mode,
                });
            }
        }
        why.push(format!("connector {conn_id}: no usable encoder/CRTC"));
    }
    Err(Error::msg(format!(
        "no usable display pipe ({})",
        if why.is_empty() {
            "no connectors".to_owned()
        } else {
            why.join("; ")
        }
    )))
}
