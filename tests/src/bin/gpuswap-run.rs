//! gpuswap's main job: boot the guest on the gpuswap daemon, squeeze its
//! memory from the host by a scenario while a GPU workload runs, and check
//! that every resource stays consistent. See `gpuswap-run --help` and the
//! README ("Reading a stress report").

use std::process::ExitCode;

use gpuswap_tests::stress::{self, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) if e == stress::USAGE => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gpuswap-run: {e}");
            return ExitCode::from(2);
        }
    };
    match stress::run(&options) {
        Ok(outcome) if outcome.passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpuswap-run: the run could not start: {e}");
            eprintln!("  reproduce: {}", options.reproduce_command());
            ExitCode::FAILURE
        }
    }
}
