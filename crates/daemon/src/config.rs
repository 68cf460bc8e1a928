//! The daemon's configuration file: the same options as the command line,
//! for when a program that passes no arguments of ours starts the daemon
//! (libvirt runs the descriptor's binary with `--fd=N` only).
//!
//! One option per line, its long name without the dashes: `name = value`,
//! or `name` alone for a flag; `#` starts a comment. The options become
//! command-line arguments placed before the real ones, so the command line
//! wins for single-valued options and repeatable ones add up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Options that make no sense in a file: they describe one invocation.
const NOT_IN_FILE: &[&str] = &["config", "fd", "print-capabilities", "help", "version"];

/// The largest configuration file read (a few options, not a data file).
const MAX_FILE_LEN: u64 = 64 << 10;

/// Where the daemon looks when `--config` is not given: `etc/gpuswap` of
/// the installation prefix the binary sits in (`/usr/local/libexec` ->
/// `/usr/local/etc`), `/etc` for `/usr` itself.
pub fn default_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let prefix = exe.parent()?.parent()?;
    let etc = if prefix == Path::new("/usr") || prefix == Path::new("/") {
        PathBuf::from("/etc")
    } else {
        prefix.join("etc")
    };
    Some(etc.join("gpuswap/daemon.conf"))
}

/// The value of `--config` on a command line, if given.
pub fn path_from_args(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
    }
    None
}

/// Reads `path` into command-line arguments.
pub fn load(path: &Path) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if len > MAX_FILE_LEN {
        return Err(format!(
            "{shown}: {len} bytes, more than a configuration file"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    parse(&text).map_err(|(line, e)| format!("{shown}:{line}: {e}"))
}

/// Parses file contents; errors carry the 1-based line number.
pub fn parse(text: &str) -> Result<Vec<OsString>, (usize, String)> {
    let mut args = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (line, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-');
        if !valid {
            return Err((i + 1, format!("{name:?} is not an option name")));
        }
        if NOT_IN_FILE.contains(&name) {
            return Err((i + 1, format!("{name} belongs on the command line only")));
        }
        args.push(match value {
            Some(value) => OsString::from(format!("--{name}={value}")),
            None => OsString::from(format!("--{name}")),
        });
    }
    Ok(args)
}

/// Expands `{pid}` in a socket path, so one configuration serves every
/// daemon libvirt starts (one per domain).
pub fn expand_pid(path: &Path) -> PathBuf {
    let pid = std::process::id().to_string();
    PathBuf::from(path.to_string_lossy().replace("{pid}", &pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn lines_become_long_options() {
        let text = "\
# gpuswap-daemon
control-socket = /run/gpuswap/{pid}.sock   # one per domain
max-host-memory=1G

once
scanout = 1920x1080
";
        assert_eq!(
            strings(parse(text).unwrap()),
            [
                "--control-socket=/run/gpuswap/{pid}.sock",
                "--max-host-memory=1G",
                "--once",
                "--scanout=1920x1080"
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(parse("once\n--once\n").unwrap_err().0, 2);
        assert_eq!(parse("= 5").unwrap_err().0, 1);
        assert_eq!(parse("Control Socket = x").unwrap_err().0, 1);
        let (line, e) = parse("\n\nfd = 3").unwrap_err();
        assert_eq!(line, 3);
        assert!(e.contains("command line"), "{e}");
    }

    #[test]
    fn config_flag_is_found() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            path_from_args(&args(&["d", "--fd=3", "--config", "/x.conf"])),
            Some(PathBuf::from("/x.conf"))
        );
        assert_eq!(
            path_from_args(&args(&["d", "--config=/y.conf"])),
            Some(PathBuf::from("/y.conf"))
        );
        assert_eq!(path_from_args(&args(&["d", "--fd=3"])), None);
    }

    #[test]
    fn pid_expands() {
        let p = expand_pid(Path::new("/run/gpuswap/{pid}.sock"));
        assert_eq!(
            p,
            PathBuf::from(format!("/run/gpuswap/{}.sock", std::process::id()))
        );
    }
}
