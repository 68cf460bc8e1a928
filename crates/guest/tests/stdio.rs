//! End-to-end: the real binary in `agent --stdio` mode, without a GPU device.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

#[test]
fn stdio_agent_round_trip() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuswap-guest"))
        .args(["agent", "--stdio", "--card", "/nonexistent/card0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpuswap-guest");
    let requests = concat!(
        "{\"id\":1,\"op\":\"hello\"}\n",
        "{\"id\":2,\"op\":\"create_blob\",\"size\":4096}\n",
        "{\"id\":3,\"op\":\"hash\"}\n",
        "{\"id\":4,\"op\":\"exit\",\"status\":7}\n",
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    let r: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[0]["ok"], true);
    assert!(r[0]["device_error"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/card0"));
    assert_eq!(r[1]["ok"], false);
    assert_eq!(r[1]["errno"], 2); // ENOENT from open(2)
    assert_eq!(r[2]["ok"], false);
    assert_eq!(r[2]["errno"], Value::Null);
    assert_eq!(r[3], serde_json::json!({"id": 4, "ok": true}));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpuswap-guest"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}
