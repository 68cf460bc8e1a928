//! gpuswap's main job: boot the guest on the gpuswap daemon, squeeze its
//! memory from the host by a scenario while a GPU workload runs, and check
//! that every resource stays consistent. See `gpuswap-run --help` and the
//! README ("Reading a stress report").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use gpuswap_harness::stress::{self, Options};
use serde_json::Value;

/// Exit status: every check passed.
const PASSED: u8 = 0;
/// The run ended in a report, and a check failed.
const CHECKS_FAILED: u8 = 1;
/// The command line was wrong.
const USAGE_ERROR: u8 = 2;
/// The run could not start (images, boot): no report, nothing checked.
const COULD_NOT_RUN: u8 = 3;

fn main() -> ExitCode {
    let options = match Options::try_parse_from(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => {
            // --help goes to stdout and is no error; the rest is a usage
            // error on stderr.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE_ERROR } else { PASSED });
        }
    };
    if options.repeat > 1 {
        return ExitCode::from(repeat(&options));
    }
    ExitCode::from(run_once(&options).0)
}

/// One run; its exit status and report (none if it could not start).
fn run_once(options: &Options) -> (u8, Option<Value>) {
    match stress::run(options) {
        Ok(outcome) if outcome.passed => (PASSED, Some(outcome.report)),
        Ok(outcome) => (CHECKS_FAILED, Some(outcome.report)),
        Err(e) => {
            let reproduce = options.reproduce_command();
            eprintln!("gpuswap-run: the run could not start: {e}");
            eprintln!("  reproduce: {reproduce}");
            if let Some(path) = &options.junit {
                let xml = stress::junit::for_error(&options.scenario.to_string(), &e, &reproduce);
                if let Err(e) = stress::junit::write(path, &xml) {
                    eprintln!("gpuswap-run: {e}");
                }
            }
            (COULD_NOT_RUN, None)
        }
    }
}

/// `--repeat N`: runs one after another, each with its own report (and
/// JUnit file), a table row per run, and a stop at the first that fails.
fn repeat(options: &Options) -> u8 {
    // A new seed series per invocation, so that hunting twice searches
    // further; every row names its seed, and the failing run's reproduce
    // command has it.
    let base = if options.seed_given {
        options.seed
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (now ^ u64::from(std::process::id()) << 20) % 1_000_000
    };
    let mut rows = Vec::new();
    let header = table_row(
        ["run", "seed", "result", "time s", "evictions", "restores"].map(String::from),
        "failed checks",
    );
    for i in 0..options.repeat {
        let mut o = options.clone();
        o.repeat = 1;
        o.seed = if options.seed_given {
            base
        } else {
            base + u64::from(i)
        };
        o.report = numbered(&options.report, i);
        o.picture = options.picture.as_deref().map(|p| numbered(p, i));
        o.junit = options.junit.as_deref().map(|p| numbered(p, i));
        o.trace = options.trace.as_deref().map(|p| numbered(p, i));
        eprintln!(
            "[gpuswap-run] repeat: run {} of {}, seed {}",
            i + 1,
            options.repeat,
            o.seed
        );
        let started = Instant::now();
        let (status, report) = run_once(&o);
        let report = report.unwrap_or(Value::Null);
        let failed: Vec<String> = report["checks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, c)| c["failed"].as_u64().unwrap_or(0) > 0)
            .map(|(name, _)| name.clone())
            .collect();
        let result = match status {
            PASSED => "passed",
            CHECKS_FAILED => "FAILED",
            _ => "could not run",
        };
        let shrinker = &report["guest_shrinker"];
        // A run that could not start has no counters.
        let count = |v: &Value| v.as_u64().map_or_else(|| "-".into(), |n| n.to_string());
        rows.push(table_row(
            [
                (i + 1).to_string(),
                o.seed.to_string(),
                result.to_string(),
                format!("{:.0}", started.elapsed().as_secs_f64()),
                count(&shrinker["evictions"]),
                count(&shrinker["restores"]),
            ],
            &failed.join(", "),
        ));
        println!("\n{header}");
        for row in &rows {
            println!("{row}");
        }
        if status != PASSED {
            println!(
                "\nrun {} of {} did not pass; its report: {}\n  reproduce: {}",
                i + 1,
                options.repeat,
                o.report.display(),
                o.reproduce_command()
            );
            return status;
        }
    }
    println!("\nall {} runs passed", options.repeat);
    PASSED
}

/// One line of the `--repeat` table: run, seed, result, seconds,
/// evictions, restores, then the failed checks. Every cell is text, so
/// that the widths apply to all of them alike (a JSON number ignores them).
fn table_row(cells: [String; 6], failed: &str) -> String {
    let [run, seed, result, seconds, evictions, restores] = cells;
    format!(
        "{run:>4}  {seed:>7}  {result:<12}  {seconds:>7}  {evictions:>9}  {restores:>8}  {failed}"
    )
    .trim_end()
    .to_string()
}

/// `dir/name.ext` as `dir/name-runN.ext` (N from 1).
fn numbered(path: &Path, i: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-run{}.{}", i + 1, ext.to_string_lossy()),
        None => format!("{stem}-run{}", i + 1),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_table_columns_line_up_under_their_headers() {
        let header = table_row(
            ["run", "seed", "result", "time s", "evictions", "restores"].map(String::from),
            "failed checks",
        );
        let row = table_row(
            ["3", "28229", "FAILED", "65", "150", "146"].map(String::from),
            "guest_kernel_log_clean",
        );
        // Right-aligned columns end where their header ends.
        for (head, cell) in [("seed", "28229"), ("evictions", "150"), ("restores", "146")] {
            let end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
            assert_eq!(end(&header, head), end(&row, cell), "{header}\n{row}");
        }
        assert_eq!(header.find("failed"), row.find("guest_kernel"));
    }
}
