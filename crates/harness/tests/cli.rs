//! `gpuswap-run`'s exit statuses for what it decides before a run starts:
//! 0 and the help on stdout for `--help`, 2 and a message on stderr for a
//! usage error. (A command line that parses would start a real run, so
//! none is given here.)

use std::process::{Command, Output};

fn gpuswap_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuswap-run"))
        .args(args)
        .output()
        .expect("run gpuswap-run")
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = gpuswap_run(&["sawtooth", flag]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert!(
            stdout.contains("Usage: gpuswap-run [SCENARIO] [OPTIONS]"),
            "{stdout}"
        );
        assert!(stdout.contains("--fault-delay <CMD=MS>"), "{stdout}");
        assert!(out.stderr.is_empty(), "{out:?}");
    }
}

#[test]
fn a_usage_error_goes_to_stderr_and_exits_2() {
    for (args, needle) in [
        (&["--frobnicate"][..], "unexpected argument '--frobnicate'"),
        (&["nosuch"][..], "unknown scenario"),
        (&["--bos"][..], "a value is required for '--bos"),
        (&["--memory", "256", "--squeeze", "250"][..], "too little"),
        (&["--kernel", "kasan"][..], "unexpected argument '--kernel'"),
    ] {
        let out = gpuswap_run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}
