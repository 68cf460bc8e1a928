//! `gpuswap-guest`: the guest-side tool. See `usage()`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gpuswap_guest::agent::{self, Agent, OnEof};
use gpuswap_guest::gpu::{Gpu, RegionArgs, DEFAULT_FORMAT};
use gpuswap_guest::{hog, kms, pattern, Error, Result};

fn usage() -> &'static str {
    "usage:
  gpuswap-guest agent [--port NAME] [--stdio] [--card PATH] [--exit-on-eof]
      serve the agent protocol on the virtio-serial port NAME
      (default org.gpuswap.agent), or on stdin/stdout with --stdio
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
    Help,
}

fn parse_args(args: &[String]) -> Result<Command> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(Error::msg("missing subcommand"));
    };
    let mut port = agent::DEFAULT_PORT.to_owned();
    let (mut stdio, mut exit_on_eof) = (false, false);
    let mut card = None;
    let (mut width, mut height, mut seed) = (64u32, 64u32, 1u64);
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
            ("agent", "--port") => port = value()?,
            ("agent", "--stdio") => stdio = true,
            ("agent", "--exit-on-eof") => exit_on_eof = true,
            ("smoke", "--width") => width = num(flag, value()?)?,
            ("smoke", "--height") => height = num(flag, value()?)?,
            ("smoke", "--seed") => seed = num(flag, value()?)?,
            _ => {
                return Err(Error::msg(format!(
                    "unexpected argument {flag:?} for {sub:?}"
                )))
            }
        }
    }
    Ok(match sub.as_str() {
        "agent" => Command::Agent {
            port,
            stdio,
            card,
            exit_on_eof,
        },
        "smoke" => Command::Smoke {
            width,
            height,
            seed,
            card,
        },
        "info" => Command::Info { card },
        "help" | "-h" | "--help" => Command::Help,
        other => return Err(Error::msg(format!("unknown subcommand {other:?}"))),
    })
}

fn run_agent(port: &str, stdio: bool, card: Option<PathBuf>, exit_on_eof: bool) -> Result<i32> {
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
    let node = agent::wait_for_port(port, agent::PORT_WAIT)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| Error::io(format!("open {}", node.display()), &e))?;
    let reader = file
        .try_clone()
        .map_err(|e| Error::io("dup agent port", &e))?;
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
    println!("params set: {}", gpu.params.set_names().join(" "));
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
        } => run_agent(&port, stdio, card, exit_on_eof),
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
