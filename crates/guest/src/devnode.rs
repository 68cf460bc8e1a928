//! Device nodes without udev: if `/dev/<name>` is missing, create it from the
//! `MAJOR:MINOR` in the sysfs `dev` attribute.

use std::fs;
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::error::{Error, Result};

/// Parse a sysfs `dev` attribute (`"226:0\n"`) into (major, minor).
pub fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Make sure the character device `node` exists; if not, mknod it (mode 0600)
/// from the `MAJOR:MINOR` read from `sysfs_dev`, creating parent directories.
pub fn ensure_char_dev(node: &Path, sysfs_dev: &Path) -> Result<()> {
    if node.exists() {
        return Ok(());
    }
    let text = fs::read_to_string(sysfs_dev).map_err(|e| Error::io(sysfs_dev.display(), &e))?;
    let (major, minor) = parse_dev(&text).ok_or_else(|| {
        Error::msg(format!(
            "{}: cannot parse device number {text:?}",
            sysfs_dev.display()
        ))
    })?;
    if let Some(parent) = node.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), &e))?;
    }
    match mknod(
        node,
        SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        makedev(major, minor),
    ) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::sys(format!("mknod {}", node.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_dev() {
        assert_eq!(parse_dev("226:0\n"), Some((226, 0)));
        assert_eq!(parse_dev("252:1"), Some((252, 1)));
        assert_eq!(parse_dev("garbage"), None);
        assert_eq!(parse_dev("1:x"), None);
    }
}
