//! Small facts about the running system: kernel release, /proc/meminfo,
//! /proc/vmstat; and dropping the page cache.

use std::fs;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// `uname -r` (read from /proc/sys/kernel/osrelease).
pub fn kernel_release() -> Result<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::io("/proc/sys/kernel/osrelease", &e))
}

/// The clocksource the kernel keeps time with (`tsc`, `refined-jiffies`).
pub fn clocksource() -> Result<String> {
    const PATH: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    fs::read_to_string(PATH)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::io(PATH, &e))
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

/// The /proc/vmstat counters the `vmstat` op reports: swap traffic, reclaim
/// scans and steals (kswapd and direct), and OOM kills.
pub const VMSTAT_KEYS: &[&str] = &[
    "pswpin",
    "pswpout",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "oom_kill",
];

/// Parse `name value` lines (/proc/vmstat, the driver's debugfs counters)
/// into `{"name": value}`; every line with a numeric value is kept under its
/// exact name.
pub fn parse_counters(text: &str) -> Map<String, Value> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let value: u64 = words.next()?.parse().ok()?;
            Some((name.to_owned(), Value::from(value)))
        })
        .collect()
}

/// `keys` of `counters`, null for the ones missing (a kernel without them).
pub fn select(counters: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .map(|&k| {
            (
                k.to_owned(),
                counters.get(k).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The [`VMSTAT_KEYS`] counters of this system's /proc/vmstat.
pub fn vmstat() -> Result<Map<String, Value>> {
    let text = fs::read_to_string("/proc/vmstat").map_err(|e| Error::io("/proc/vmstat", &e))?;
    Ok(select(&parse_counters(&text), VMSTAT_KEYS))
}

/// Where `drop_caches` writes.
pub const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// The `drop_caches` level: 1 page cache, 2 slab (dentries, inodes), 3 both;
/// default 3.
pub fn drop_caches_level(level: Option<u8>) -> Result<u8> {
    match level.unwrap_or(3) {
        level @ 1..=3 => Ok(level),
        other => Err(Error::msg(format!(
            "drop_caches level must be 1, 2 or 3, got {other}"
        ))),
    }
}

/// sync(2), then write `level` to /proc/sys/vm/drop_caches.
pub fn drop_caches(level: Option<u8>) -> Result<()> {
    let level = drop_caches_level(level)?;
    nix::unistd::sync();
    write_drop_caches(std::path::Path::new(DROP_CACHES), level)
}

/// Write `level` to the drop_caches file `path`.
pub fn write_drop_caches(path: &std::path::Path, level: u8) -> Result<()> {
    fs::write(path, level.to_string()).map_err(|e| Error::io(path.display(), &e))
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

    #[test]
    fn parses_vmstat() {
        let text = "nr_free_pages 1234\npswpin 5\npswpout 6\npgscan_kswapd 7\n\
                    pgscan_direct 8\npgsteal_kswapd 9\npgsteal_direct 10\noom_kill 1\n\
                    bogus\nhalf x\n";
        let all = parse_counters(text);
        assert_eq!(all.len(), 8);
        assert_eq!(all["nr_free_pages"], 1234);
        let sel = select(&all, VMSTAT_KEYS);
        assert_eq!(
            Value::Object(sel),
            serde_json::json!({"pswpin": 5, "pswpout": 6, "pgscan_kswapd": 7,
                "pgscan_direct": 8, "pgsteal_kswapd": 9, "pgsteal_direct": 10, "oom_kill": 1})
        );
        let sparse = select(&parse_counters("pswpin 1\n"), VMSTAT_KEYS);
        assert_eq!(sparse.len(), VMSTAT_KEYS.len());
        assert_eq!(sparse["pswpin"], 1);
        assert_eq!(sparse["oom_kill"], Value::Null);
    }

    #[test]
    fn vmstat_of_this_system() {
        let v = vmstat().unwrap();
        assert_eq!(v.len(), VMSTAT_KEYS.len());
        assert!(v["pswpout"].is_u64(), "{v:?}");
    }

    #[test]
    fn drop_caches_levels() {
        assert_eq!(drop_caches_level(None).unwrap(), 3);
        assert_eq!(drop_caches_level(Some(1)).unwrap(), 1);
        assert_eq!(drop_caches_level(Some(2)).unwrap(), 2);
        for bad in [0, 4, 255] {
            let e = drop_caches_level(Some(bad)).unwrap_err();
            assert!(e.message.contains("1, 2 or 3"), "{}", e.message);
            assert_eq!(e.errno, None);
        }
        // Not /proc/sys/vm/drop_caches: the host's caches stay.
        let path = std::env::temp_dir().join(format!("gpuswap-drop-caches-{}", std::process::id()));
        write_drop_caches(&path, 2).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "2");
        fs::remove_file(&path).unwrap();
        let e = write_drop_caches(std::path::Path::new("/nonexistent/drop_caches"), 3).unwrap_err();
        assert_eq!(e.errno, Some(2));
    }
}
