//! `gpuswap-guest`: the guest-side tool. See `usage()`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gpuswap_guest::agent::{self, Agent, OnEof};
use gpuswap_guest::gpu::{Gpu, RegionArgs, DEFAULT_FORMAT};
use gpuswap_guest::{hog, kms, pattern, reclaim_bench, shrink, virtgpu, Error, Result};

fn usage() -> &'static str {
    "usage:
  gpuswap-guest agent [--port NAME] [--port-wait SECS] [--stdio] [--card PATH]
                [--exit-on-eof]
      serve the agent protocol on the virtio-serial port NAME
      (default org.gpuswap.agent; waiting up to SECS, default 60, for the
      port to appear), or on stdin/stdout with --stdio
  gpuswap-guest sampler [--port NAME]
      serve the read-only requests (hello, meminfo, shrinker_stats, vmstat,
      sample) on the virtio-serial port NAME (default org.gpuswap.sampler),
      locked in memory, so the host can sample the guest while the agent's
      requests block; gives up quietly if the port never appears
  gpuswap-guest touch [--mib M]
      map M MiB (default 64) of anonymous memory, write each page once and
      print the first-touch latencies as JSON (max, mean, slow ones)
  gpuswap-guest shrink --variant mmap|transfer [--id N] [--bos K] [--rows R]
                [--rounds N] [--seed S] [--dontneed-share F] [--hold-until PATH]
      one process of an igt-style shrinker test: create K 1024xR 2D BOs
      (default 16 x 1024 rows, 4 MiB each), write them, mark a share F
      DONTNEED, use the rest again N times (mmap: read back; transfer: to
      the host), check the DONTNEED ones, print a JSON report, then hold the
      BOs until PATH exists (default: exit at once)
  gpuswap-guest reclaim-bench [--bos N] [--rounds R] [--seed S]
      the guest side of `cargo xtask bench --guest`: evict N idle 4 MiB BOs
      (default 24) with a forced scan and restore them by CPU touch and by
      transfer, next to MADV_PAGEOUT and first touches of as much anonymous
      memory with the same content, R rounds (default 3); prints JSON
  gpuswap-guest smoke [--width W] [--height H] [--seed S] [--card PATH]
      create a 2D BO (default 64x64), write pattern (S, bo 0, version 0),
      transfer it to the host and print
      'GPUSWAP-SMOKE res_id=<id> hash=<16 hex>'
  gpuswap-guest info [--card PATH]
      print the device's driver, parameters and display pipes"
}

/// Parsed command line.
enum Command {
    Agent {
        port: String,
        stdio: bool,
        card: Option<PathBuf>,
        exit_on_eof: bool,
        port_wait: Duration,
    },
    Sampler {
        port: String,
    },
    Touch {
        mib: u64,
    },
    Smoke {
        width: u32,
        height: u32,
        seed: u64,
        card: Option<PathBuf>,
    },
    Info {
        card: Option<PathBuf>,
    },
    Shrink {
        plan: shrink::Plan,
        hold_until: Option<PathBuf>,
    },
    ReclaimBench {
        plan: reclaim_bench::Plan,
    },
    Help,
}

fn parse_args(args: &[String]) -> Result<Command> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(Error::msg("missing subcommand"));
    };
    let mut port = match sub.as_str() {
        "sampler" => agent::SAMPLER_PORT,
        _ => agent::DEFAULT_PORT,
    }
    .to_owned();
    let (mut stdio, mut exit_on_eof) = (false, false);
    let mut port_wait = agent::PORT_WAIT;
    let mut card = None;
    let (mut width, mut height, mut seed) = (64u32, 64u32, 1u64);
    let mut mib = 64u64;
    let mut plan = shrink::Plan {
        variant: shrink::Variant::Mmap,
        id: 0,
        bos: 16,
        rows: 1024,
        rounds: 2,
        seed: 1,
        dontneed_share: 0.0,
    };
    let mut hold_until = None;
    let mut bench = reclaim_bench::Plan {
        bos: 24,
        rounds: 3,
        seed: 1,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error::msg(format!("{flag} needs a value")))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T> {
            v.parse()
                .map_err(|_| Error::msg(format!("{flag}: not a valid number: {v:?}")))
        }
        match (sub.as_str(), flag.as_str()) {
            (_, "-h" | "--help") => return Ok(Command::Help),
            ("agent" | "smoke" | "info", "--card") => card = Some(PathBuf::from(value()?)),
            ("agent" | "sampler", "--port") => port = value()?,
            ("agent", "--stdio") => stdio = true,
            ("agent", "--exit-on-eof") => exit_on_eof = true,
            ("agent", "--port-wait") => port_wait = Duration::from_secs(num(flag, value()?)?),
            ("touch", "--mib") => mib = num(flag, value()?)?,
            ("smoke", "--width") => width = num(flag, value()?)?,
            ("smoke", "--height") => height = num(flag, value()?)?,
            ("smoke", "--seed") => seed = num(flag, value()?)?,
            ("shrink", "--variant") => plan.variant = value()?.parse()?,
            ("shrink", "--id") => plan.id = num(flag, value()?)?,
            ("shrink", "--bos") => plan.bos = num(flag, value()?)?,
            ("shrink", "--rows") => plan.rows = num(flag, value()?)?,
            ("shrink", "--rounds") => plan.rounds = num(flag, value()?)?,
            ("shrink", "--seed") => plan.seed = num(flag, value()?)?,
            ("shrink", "--dontneed-share") => {
                plan.dontneed_share = num(flag, value()?)?;
                if !(0.0..=1.0).contains(&plan.dontneed_share) {
                    return Err(Error::msg("--dontneed-share takes a share from 0 to 1"));
                }
            }
            ("shrink", "--hold-until") => hold_until = Some(PathBuf::from(value()?)),
            ("reclaim-bench", "--bos") => bench.bos = num(flag, value()?)?,
            ("reclaim-bench", "--rounds") => bench.rounds = num(flag, value()?)?,
            ("reclaim-bench", "--seed") => bench.seed = num(flag, value()?)?,
            _ => {
                return Err(Error::msg(format!(
                    "unexpected argument {flag:?} for {sub:?}"
                )))
            }
        }
    }
    Ok(match sub.as_str() {
        "sampler" => Command::Sampler { port },
        "touch" => Command::Touch { mib },
        "agent" => Command::Agent {
            port,
            stdio,
            card,
            exit_on_eof,
            port_wait,
        },
        "smoke" => Command::Smoke {
            width,
            height,
            seed,
            card,
        },
        "info" => Command::Info { card },
        "shrink" => Command::Shrink { plan, hold_until },
        "reclaim-bench" => Command::ReclaimBench { plan: bench },
        "help" | "-h" | "--help" => Command::Help,
        other => return Err(Error::msg(format!("unknown subcommand {other:?}"))),
    })
}

fn run_agent(
    port: &str,
    port_wait: Duration,
    stdio: bool,
    card: Option<PathBuf>,
    exit_on_eof: bool,
) -> Result<i32> {
    // Under memory pressure the OOM killer should take the hog (score 1000),
    // never the host's channel into the guest. Needs root; best effort.
    if let Err(e) = hog::protect_agent_from_oom() {
        eprintln!("gpuswap-guest: cannot lower the agent's OOM score: {e}");
    }
    if stdio {
        let mut agent = Agent::new(card.as_deref());
        return agent.serve(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            OnEof::Stop,
        );
    }
    let node = agent::wait_for_port(port, port_wait)?;
    let (reader, file) = open_port(&node)?;
    let mut agent = Agent::new(card.as_deref());
    eprintln!(
        "gpuswap-guest: agent serving on {} ({port})",
        node.display()
    );
    let on_eof = if exit_on_eof {
        OnEof::Stop
    } else {
        OnEof::Retry(Duration::from_millis(50))
    };
    agent.serve(reader, file, on_eof)
}

/// A virtio-serial port node opened for reading and writing: (reader,
/// writer).
fn open_port(node: &std::path::Path) -> Result<(std::fs::File, std::fs::File)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map_err(|e| Error::io(format!("open {}", node.display()), &e))?;
    let reader = file
        .try_clone()
        .map_err(|e| Error::io(format!("dup {}", node.display()), &e))?;
    Ok((reader, file))
}

fn run_sampler(port: &str) -> Result<i32> {
    if let Err(e) = hog::protect_agent_from_oom() {
        eprintln!("gpuswap-guest sampler: cannot lower its OOM score: {e}");
    }
    // Resident for good: a stall the host sees is the kernel's, never the
    // sampler's own pages coming back from swap.
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        eprintln!("gpuswap-guest sampler: mlockall: {e}");
    }
    let node = match agent::wait_for_port(port, agent::PORT_WAIT) {
        Ok(node) => node,
        Err(e) => {
            // The launcher may not offer a sampler channel: not an error.
            eprintln!("gpuswap-guest sampler: {e}; not sampling");
            return Ok(0);
        }
    };
    let (reader, file) = open_port(&node)?;
    eprintln!(
        "gpuswap-guest: sampler serving on {} ({port})",
        node.display()
    );
    Agent::sampler().serve(reader, file, OnEof::Retry(Duration::from_millis(50)))
}

/// One igt-style shrink process: report on stdout, exit status 1 if any
/// content was wrong; the BOs stay open until `hold_until` exists.
fn run_shrink(plan: &shrink::Plan, hold_until: Option<&std::path::Path>) -> Result<i32> {
    let report = shrink::run(plan, |report| {
        let line = serde_json::to_string(report).map_err(|e| Error::msg(e.to_string()))?;
        println!("{line}");
        if let Some(path) = hold_until {
            while !path.exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    })?;
    let bad = !report.mismatches.is_empty() || report.purged_but_readable > 0;
    Ok(i32::from(bad))
}

fn run_smoke(width: u32, height: u32, seed: u64, card: Option<PathBuf>) -> Result<()> {
    let mut gpu = Gpu::open(card.as_deref())?;
    let (handle, res_id) = {
        let bo = gpu.create_2d(width, height, DEFAULT_FORMAT)?;
        (bo.handle, bo.res_id)
    };
    let hashes = gpu.write(handle, seed, 0, 0)?;
    gpu.transfer_to_host(handle, RegionArgs::default(), None)?;
    println!(
        "GPUSWAP-SMOKE res_id={res_id} hash={}",
        pattern::hex(hashes.hash)
    );
    gpu.close(handle)
}

fn run_info(card: Option<PathBuf>) -> Result<()> {
    let gpu = Gpu::open(card.as_deref())?;
    let d = &gpu.driver;
    println!("card: {}", gpu.card_path().display());
    println!(
        "driver: {} {}.{}.{} ({})",
        d.name, d.major, d.minor, d.patchlevel, d.desc
    );
    let p = serde_json::to_value(&gpu.params).map_err(|e| Error::msg(e.to_string()))?;
    if let Some(obj) = p.as_object() {
        for (name, value) in obj {
            println!("param {name}: {value}");
        }
    }
    println!(
        "params set: {}",
        virtgpu::set_param_names(&gpu.params).join(" ")
    );
    // KMS is informational: report failures instead of failing.
    let card = gpu.card();
    match kms::get_resources(card) {
        Ok(res) => {
            println!(
                "kms: {} crtcs, {} connectors, {} encoders, max {}x{}",
                res.crtcs.len(),
                res.connectors.len(),
                res.encoders.len(),
                res.max_width,
                res.max_height
            );
            for &id in &res.connectors {
                match kms::get_connector(card, id) {
                    Ok(c) => {
                        let modes: Vec<String> =
                            c.modes.iter().take(8).map(kms::mode_name).collect();
                        println!(
                            "connector {id}: {} modes [{}{}]",
                            if c.connected {
                                "connected"
                            } else {
                                "disconnected"
                            },
                            modes.join(" "),
                            if c.modes.len() > 8 { " ..." } else { "" }
                        );
                    }
                    Err(e) => println!("connector {id}: {e}"),
                }
            }
            for &id in &res.crtcs {
                match kms::get_crtc(card, id) {
                    Ok(c) => println!(
                        "crtc {id}: fb {} mode {}",
                        c.fb_id,
                        if c.mode_valid != 0 {
                            kms::mode_name(&c.mode)
                        } else {
                            "none".into()
                        }
                    ),
                    Err(e) => println!("crtc {id}: {e}"),
                }
            }
        }
        Err(e) => println!("kms: {e}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpuswap-guest: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{}", usage());
            Ok(0)
        }
        Command::Agent {
            port,
            stdio,
            card,
            exit_on_eof,
            port_wait,
        } => run_agent(&port, port_wait, stdio, card, exit_on_eof),
        Command::Sampler { port } => run_sampler(&port),
        Command::Touch { mib } => gpuswap_guest::touch::run(mib).map(|v| {
            println!("{v}");
            0
        }),
        Command::Smoke {
            width,
            height,
            seed,
            card,
        } => run_smoke(width, height, seed, card)
            .map_err(|e| {
                println!("GPUSWAP-SMOKE-FAILED {e}");
                e
            })
            .map(|()| 0),
        Command::Info { card } => run_info(card).map(|()| 0),
        Command::Shrink { plan, hold_until } => run_shrink(&plan, hold_until.as_deref()),
        Command::ReclaimBench { plan } => reclaim_bench::run(plan).map(|v| {
            println!("{v}");
            0
        }),
    };
    match result {
        Ok(status) => ExitCode::from((status & 0xff) as u8),
        Err(e) => {
            eprintln!("gpuswap-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn cli_parsing() {
        match parse_args(&args("agent --stdio --port p")).unwrap() {
            Command::Agent { port, stdio, .. } => assert_eq!((port.as_str(), stdio), ("p", true)),
            _ => panic!("expected agent"),
        }
        match parse_args(&args("sampler")).unwrap() {
            Command::Sampler { port } => assert_eq!(port, "org.gpuswap.sampler"),
            _ => panic!("expected sampler"),
        }
        match parse_args(&args("smoke --width 8 --seed 99")).unwrap() {
            Command::Smoke {
                width,
                height,
                seed,
                ..
            } => assert_eq!((width, height, seed), (8, 64, 99)),
            _ => panic!("expected smoke"),
        }
        assert!(matches!(
            parse_args(&args("info")).unwrap(),
            Command::Info { card: None }
        ));
        assert!(parse_args(&args("smoke --width")).is_err());
        assert!(parse_args(&args("smoke --width x")).is_err());
        assert!(parse_args(&args("info --stdio")).is_err());
        assert!(parse_args(&args("bogus")).is_err());
        assert!(parse_args(&[]).is_err());
    }
}
