//! Small facts about the running system: kernel release, /proc/meminfo.

use std::fs;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// `uname -r` (read from /proc/sys/kernel/osrelease).
pub fn kernel_release() -> Result<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::io("/proc/sys/kernel/osrelease", &e))
}

/// Parse /proc/meminfo text into `{"MemTotal": <KiB>, ...}`. Every line with a
/// numeric value is kept under its exact /proc/meminfo name; values with a
/// `kB` unit are KiB, the few unitless ones (HugePages_*) are counts.
pub fn parse_meminfo(text: &str) -> Map<String, Value> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let value: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), Value::from(value)))
        })
        .collect()
}

/// /proc/meminfo of this system.
pub fn meminfo() -> Result<Map<String, Value>> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| Error::io("/proc/meminfo", &e))?;
    Ok(parse_meminfo(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let m = parse_meminfo(
            "MemTotal:         497440 kB\nMemFree:          400000 kB\nSwapFree:              0 kB\n\
             HugePages_Total:       0\nbogus line\n",
        );
        assert_eq!(m["MemTotal"], 497440);
        assert_eq!(m["MemFree"], 400000);
        assert_eq!(m["SwapFree"], 0);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 4);
    }
}
