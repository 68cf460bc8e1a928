//! The agent: finds the virtio-serial port, reads requests line by line,
//! dispatches them to the GPU session and writes one response line each.
//! See [`crate::proto`] for the wire format.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::devnode;
use crate::error::{Error, Result};
use crate::gpu::{Bo, FbArgs, Gpu, RegionArgs, DEFAULT_FORMAT};
use crate::hog::Hog;
use crate::ktrace::{self, KernelTrace};
use crate::proto::{self, Request};
use crate::shrinker;
use crate::sysinfo;
use crate::uapi;
use gpuswap_api::agent as op;

/// Default virtio-serial port name of the agent channel.
pub const DEFAULT_PORT: &str = "org.gpuswap.agent";
/// Default virtio-serial port name of the sampler channel.
pub const SAMPLER_PORT: &str = "org.gpuswap.sampler";

/// How long `wait_for_port` waits for the port to be named.
pub const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`find_port`], retried until `timeout`: the device names its ports in
/// control messages that arrive after the driver has probed, so early in
/// boot the port (or its name) may not be there yet.
pub fn wait_for_port(name: &str, timeout: std::time::Duration) -> Result<PathBuf> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match find_port(name) {
            Ok(node) => return Ok(node),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Find the virtio-serial port called `name` (`/sys/class/virtio-ports/vport*/name`)
/// and return its `/dev/vportNpM` node, creating the node if udev is absent.
pub fn find_port(name: &str) -> Result<PathBuf> {
    let dir = Path::new("/sys/class/virtio-ports");
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir.display(), &e))?;
    let mut seen = Vec::new();
    let mut ports: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    ports.sort();
    for port in ports {
        let vport = port.file_name().expect("read_dir entries have names");
        // The name arrives from the host after the port appears: an unnamed
        // port is a different failure from no port at all, so say which.
        let Ok(port_name) = fs::read_to_string(port.join("name")) else {
            seen.push(format!("{} (unnamed)", vport.to_string_lossy()));
            continue;
        };
        let port_name = port_name.trim();
        if port_name == name {
            let node = Path::new("/dev").join(vport);
            devnode::ensure_char_dev(&node, &port.join("dev"))?;
            return Ok(node);
        }
        seen.push(port_name.to_owned());
    }
    Err(Error::with_errno(
        format!(
            "no virtio-serial port named {name:?} (found: [{}])",
            seen.join(", ")
        ),
        nix::errno::Errno::ENOENT,
    ))
}

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Exit(i32),
}

/// What to do when the input reports end-of-file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEof {
    /// Stop serving (stdio, or `--exit-on-eof`).
    Stop,
    /// Keep polling: a virtio-serial port reads 0 while no host is connected.
    Retry(Duration),
}

/// The request dispatcher. The device is optional so the protocol works (and
/// can be tested) without one: device ops then fail with the open error.
#[derive(Debug)]
pub struct Agent {
    gpu: std::result::Result<Gpu, Error>,
    scan_loop: Option<shrinker::ScanLoop>,
    /// The memory hog child (killed when the agent is dropped).
    hog: Hog,
    /// Only requests that read the guest's state are served (the sampler).
    read_only: bool,
    /// The kernel tracepoints being streamed (`trace_start`).
    ktrace: Option<KernelTrace>,
}

impl Agent {
    /// Open the virtio-gpu device (`card` or auto-detected); a failure is kept
    /// and reported by `hello` and every device op.
    pub fn new(card: Option<&Path>) -> Agent {
        Agent {
            gpu: Gpu::open(card),
            scan_loop: None,
            hog: Hog::new(),
            read_only: false,
            ktrace: None,
        }
    }

    /// The sampler: no device, and only `hello`, `meminfo`,
    /// `shrinker_stats`, `vmstat` and `sample`, so a second channel into
    /// the guest cannot change what the workload's channel sees.
    pub fn sampler() -> Agent {
        Agent {
            read_only: true,
            ..Agent::without_device(Error::msg("the sampler opens no device"))
        }
    }

    /// An agent with no device (device ops fail with `err`).
    pub fn without_device(err: Error) -> Agent {
        Agent {
            gpu: Err(err),
            scan_loop: None,
            hog: Hog::new(),
            read_only: false,
            ktrace: None,
        }
    }

    fn gpu(&mut self) -> Result<&mut Gpu> {
        self.gpu
            .as_mut()
            .map_err(|e| e.clone().context("no virtio-gpu device"))
    }

    /// Handle one request line; returns the response line (no newline).
    pub fn handle_line(&mut self, line: &str) -> (String, Outcome) {
        let (id, req) = proto::parse_request(line);
        let result = req.and_then(|req| self.dispatch(req));
        match (id, result) {
            (Some(id), Ok((results, outcome))) => (proto::ok_response(id, results), outcome),
            (id, Err(e)) => (proto::err_response(id, &e), Outcome::Continue),
            (None, Ok(_)) => unreachable!("a request without an id is never dispatched"),
        }
    }

    /// Run one request.
    pub fn dispatch(&mut self, req: Request) -> Result<(Map<String, Value>, Outcome)> {
        let reads_only = matches!(
            req,
            Request::Hello(_)
                | Request::Meminfo(_)
                | Request::ShrinkerStats(_)
                | Request::Vmstat(_)
                | Request::Sample(_)
                | Request::TraceStart(_)
                | Request::TraceRead(_)
                | Request::TraceStop(_)
        );
        if self.read_only && !reads_only {
            return Err(Error::with_errno(
                "the sampler channel only reads (hello, meminfo, shrinker_stats, vmstat, sample, trace_*)",
                nix::errno::Errno::EPERM,
            ));
        }
        let mut outcome = Outcome::Continue;
        let v = match req {
            Request::Hello(_) => self.hello(),
            Request::Create2d(op::Create2d {
                width,
                height,
                format,
            }) => created(self.gpu()?.create_2d(
                width,
                height,
                format.unwrap_or(DEFAULT_FORMAT),
            )?)?,
            Request::CreateBlob(op::CreateBlob { size, blob_flags }) => {
                created(self.gpu()?.create_blob(
                    size,
                    blob_flags.unwrap_or(uapi::VIRTGPU_BLOB_FLAG_USE_MAPPABLE),
                )?)?
            }
            Request::CreateDumb(op::CreateDumb { width, height }) => {
                created(self.gpu()?.create_dumb(width, height)?)?
            }
            Request::Write(op::Write {
                handle,
                seed,
                bo,
                version,
                pattern,
            }) => hashes(self.gpu()?.write_kind(
                handle,
                pattern.unwrap_or_default(),
                seed,
                bo,
                version,
            )?)?,
            Request::TransferToHost(op::TransferToHost {
                handle,
                x,
                y,
                w,
                h,
                offset,
                barrier,
            }) => {
                let args = RegionArgs { x, y, w, h, offset };
                let barrier_res_id = self.gpu()?.transfer_to_host(handle, args, barrier)?;
                fields(&op::Transferred { barrier_res_id })?
            }
            Request::TransferFromHost(op::TransferFromHost {
                handle,
                x,
                y,
                w,
                h,
                offset,
            }) => {
                let args = RegionArgs { x, y, w, h, offset };
                self.gpu()?.transfer_from_host(handle, args)?;
                json!({})
            }
            Request::Wait(op::Wait { handle, nowait }) => {
                self.gpu()?.wait(handle, nowait.unwrap_or(false))?;
                json!({})
            }
            Request::Hash(op::Hash { handle }) => hashes(self.gpu()?.hash(handle)?)?,
            Request::Verify(op::Verify {
                handle,
                seed,
                bo,
                version,
                pattern,
            }) => {
                let first_bad_offset = self.gpu()?.verify_kind(
                    handle,
                    pattern.unwrap_or_default(),
                    seed,
                    bo,
                    version,
                )?;
                fields(&op::Verified {
                    ok_content: first_bad_offset.is_none(),
                    first_bad_offset: first_bad_offset.map(|at| at as u64),
                })?
            }
            Request::Info(op::Info { handle }) => {
                let info = self.gpu()?.info(handle)?;
                fields(&op::BoInfo {
                    res_id: info.res_id,
                    size: u64::from(info.size),
                    blob_mem: info.blob_mem,
                })?
            }
            Request::Close(op::Close { handle }) => {
                self.gpu()?.close(handle)?;
                json!({})
            }
            Request::List(_) => {
                let gpu = self.gpu()?;
                let bos: Vec<_> = gpu.bos().map(Bo::summary).collect();
                json!({ "bos": bos, "scanout": gpu.current_scanout() })
            }
            Request::Meminfo(_) => Value::Object(sysinfo::meminfo()?),
            Request::Scanout(op::Scanout {
                handle,
                width,
                height,
                stride,
            }) => {
                let fb = FbArgs {
                    width,
                    height,
                    stride,
                };
                fields(&self.gpu()?.scanout(handle, fb)?)?
            }
            Request::ScanoutOff(_) => fields(&op::WasOn {
                was_on: self.gpu()?.scanout_off()?,
            })?,
            Request::Madvise(op::Madvise { handle, madv }) => {
                let madv = match madv {
                    op::Madv::Willneed => uapi::VIRTGPU_MADV_WILLNEED,
                    op::Madv::Dontneed => uapi::VIRTGPU_MADV_DONTNEED,
                };
                fields(&op::Retained {
                    retained: self.gpu()?.madvise(handle, madv)?,
                })?
            }
            Request::Touch(op::Touch { handle, offset }) => fields(&op::Touched {
                signal: self.gpu()?.touch(handle, offset.unwrap_or(0))?,
            })?,
            Request::ShrinkerStats(_) => Value::Object(shrinker::stats()?),
            Request::ShrinkerScan(op::ShrinkerScan { pages, mode }) => {
                Value::Object(shrinker::scan(mode.unwrap_or_default(), pages)?)
            }
            Request::ScanLoopStart(op::ScanLoopStart {
                pages,
                mode,
                interval_ms,
            }) => {
                if self.scan_loop.is_some() {
                    return Err(Error::msg("a scan loop is already running"));
                }
                self.scan_loop = Some(shrinker::ScanLoop::start(
                    mode.unwrap_or_default(),
                    pages,
                    Duration::from_millis(interval_ms.unwrap_or(0)),
                )?);
                json!({})
            }
            Request::ScanLoopStop(_) => match self.scan_loop.take() {
                Some(l) => fields(&l.stop()?)?,
                None => return Err(Error::msg("no scan loop is running")),
            },
            Request::Hog(op::Hog { mib }) => {
                let limit_mib = sysinfo::meminfo()?
                    .get("MemTotal")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| Error::msg("no MemTotal in /proc/meminfo"))?
                    / 1024;
                let inherited = match &self.gpu {
                    Ok(gpu) => gpu.mapped_ranges(),
                    Err(_) => Vec::new(),
                };
                fields(&self.hog.set(mib, limit_mib, &inherited)?)?
            }
            Request::DropCaches(op::DropCaches { level }) => {
                sysinfo::drop_caches(level)?;
                json!({})
            }
            Request::Vmstat(_) => Value::Object(sysinfo::vmstat()?),
            Request::Sample(_) => json!({
                "meminfo": sysinfo::meminfo()?,
                "shrinker": shrinker::stats().ok(),
                "vmstat": sysinfo::vmstat()?,
            }),
            Request::TraceStart(_) => {
                if self.ktrace.is_some() {
                    return Err(Error::msg("the kernel trace is already streaming"));
                }
                let trace = KernelTrace::start()?;
                self.ktrace = Some(trace);
                json!({ "events": ktrace::EVENTS, "mono_ns": ktrace::mono_ns() })
            }
            Request::TraceRead(op::TraceRead { max }) => {
                let trace = self
                    .ktrace
                    .as_ref()
                    .ok_or_else(|| Error::msg("the kernel trace is not streaming (trace_start)"))?;
                fields(&trace.drain(max.unwrap_or(ktrace::MAX_DRAIN)))?
            }
            Request::TraceStop(_) => fields(&op::WasOn {
                was_on: self.ktrace.take().is_some(),
            })?,
            Request::Run(op::Run { argv }) => fields(&shrinker::run(&argv)?)?,
            Request::Exit(op::Exit { status }) => {
                outcome = Outcome::Exit(status.unwrap_or(0));
                json!({})
            }
        };
        match v {
            Value::Object(m) => Ok((m, outcome)),
            other => unreachable!("results are always objects, got {other}"),
        }
    }

    fn hello(&self) -> Value {
        let mut v = json!({
            "kernel": sysinfo::kernel_release().ok(),
            "clocksource": sysinfo::clocksource().ok(),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        match &self.gpu {
            Ok(gpu) => {
                v["card"] = json!(gpu.card_path().display().to_string());
                v["driver"] = json!({
                    "name": gpu.driver.name,
                    "version": format!(
                        "{}.{}.{}",
                        gpu.driver.major, gpu.driver.minor, gpu.driver.patchlevel
                    ),
                });
                v["device"] = json!(gpu.params);
            }
            Err(e) => {
                v["card"] = Value::Null;
                v["driver"] = Value::Null;
                v["device"] = Value::Null;
                v["device_error"] = json!(e.message);
                v["device_errno"] = json!(e.errno);
            }
        }
        v
    }

    /// Serve requests from `input`, writing responses to `output`, until EOF
    /// (with [`OnEof::Stop`]) or an `exit` request. Returns the exit status.
    pub fn serve(
        &mut self,
        mut input: impl Read,
        mut output: impl Write,
        on_eof: OnEof,
    ) -> Result<i32> {
        let mut buf: Vec<u8> = Vec::new();
        let mut discarding = false;
        let mut chunk = [0u8; 4096];
        loop {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("agent read", &e)),
            };
            if n == 0 {
                match on_eof {
                    OnEof::Stop => {
                        // A last line without a newline still counts.
                        if !discarding && !buf.is_empty() {
                            let line = String::from_utf8_lossy(&buf).into_owned();
                            buf.clear();
                            if let Some(status) = self.reply(&line, &mut output)? {
                                return Ok(status);
                            }
                        }
                        return Ok(0);
                    }
                    OnEof::Retry(delay) => {
                        if !buf.is_empty() {
                            eprintln!(
                                "gpuswap-guest: host disconnected, dropping a partial request"
                            );
                        }
                        buf.clear();
                        discarding = false;
                        std::thread::sleep(delay);
                        continue;
                    }
                }
            }
            let mut data = &chunk[..n];
            while let Some(pos) = data.iter().position(|&b| b == b'\n') {
                let (head, rest) = data.split_at(pos);
                data = &rest[1..];
                if discarding {
                    discarding = false;
                    buf.clear();
                    continue;
                }
                buf.extend_from_slice(head);
                if buf.len() > proto::MAX_LINE {
                    buf.clear();
                    write_line(&mut output, &too_long())?;
                    continue;
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if let Some(status) = self.reply(&line, &mut output)? {
                    return Ok(status);
                }
            }
            if !discarding {
                buf.extend_from_slice(data);
                if buf.len() > proto::MAX_LINE {
                    buf.clear();
                    discarding = true;
                    write_line(&mut output, &too_long())?;
                }
            }
        }
    }

    /// Answer one line (blank lines are ignored). `Some(status)` on exit.
    fn reply(&mut self, line: &str, output: &mut impl Write) -> Result<Option<i32>> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let (response, outcome) = self.handle_line(line);
        write_line(output, &response)?;
        Ok(match outcome {
            Outcome::Continue => None,
            Outcome::Exit(status) => Some(status),
        })
    }
}

fn too_long() -> String {
    let err = Error::msg(format!(
        "request line longer than {} bytes",
        proto::MAX_LINE
    ));
    proto::err_response(None, &err)
}

fn write_line(output: &mut impl Write, line: &str) -> Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    output
        .write_all(&bytes)
        .and_then(|()| output.flush())
        .map_err(|e| Error::io("agent write", &e))
}

/// A reply type of `gpuswap_api::agent` as the reply's fields.
fn fields(results: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(results).map_err(|e| Error::msg(e.to_string()))
}

fn created(bo: &Bo) -> Result<Value> {
    let stride = match bo.kind {
        crate::gpu::BoKind::TwoD { stride, .. } | crate::gpu::BoKind::Dumb { stride, .. } => stride,
        crate::gpu::BoKind::Blob { .. } => 0,
    };
    fields(&op::Created {
        handle: bo.handle,
        res_id: bo.res_id,
        size: bo.size,
        stride,
        content_size: bo.content_size,
    })
}

fn hashes(h: crate::gpu::Hashes) -> Result<Value> {
    fields(&op::Hashes {
        hash: gpuswap_api::hex(h.hash),
        hash_full: gpuswap_api::hex(h.hash_full),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent::without_device(Error::with_errno(
            "open /dev/dri/card0",
            nix::errno::Errno::ENOENT,
        ))
    }

    fn run(input: &str) -> (Vec<Value>, i32) {
        let mut out = Vec::new();
        let status = agent()
            .serve(input.as_bytes(), &mut out, OnEof::Stop)
            .unwrap();
        let lines = String::from_utf8(out).unwrap();
        (
            lines
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            status,
        )
    }

    #[test]
    fn hello_without_device() {
        let (r, status) = run("{\"id\":1,\"op\":\"hello\"}\n");
        assert_eq!(status, 0);
        assert_eq!(r[0]["id"], 1);
        assert_eq!(r[0]["ok"], true);
        assert_eq!(r[0]["pid"], std::process::id());
        assert_eq!(r[0]["device"], Value::Null);
        assert!(r[0]["device_error"].as_str().unwrap().contains("card0"));
    }

    /// The sampler reads the guest's state and nothing else.
    #[test]
    fn sampler_only_reads() {
        let mut sampler = Agent::sampler();
        let reply = |agent: &mut Agent, line: &str| -> Value {
            serde_json::from_str(&agent.handle_line(line).0).unwrap()
        };
        let r = reply(&mut sampler, r#"{"id":1,"op":"sample"}"#);
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["meminfo"]["MemTotal"].as_u64().unwrap() > 0, "{r}");
        assert!(r["vmstat"].is_object(), "{r}");
        for op in [
            r#"{"id":2,"op":"hog","mib":1}"#,
            r#"{"id":3,"op":"create_2d","width":4,"height":4}"#,
            r#"{"id":4,"op":"drop_caches"}"#,
            r#"{"id":5,"op":"exit"}"#,
        ] {
            let (line, outcome) = sampler.handle_line(op);
            let r: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(r["ok"], false, "{op}: {r}");
            assert_eq!(r["errno"], nix::errno::Errno::EPERM as i32, "{op}: {r}");
            assert_eq!(outcome, Outcome::Continue);
        }
    }

    #[test]
    fn errors_and_exit() {
        let input = concat!(
            "{\"id\":1,\"op\":\"nope\"}\n",
            "\n",
            "garbage\n",
            "{\"id\":2,\"op\":\"create_2d\",\"width\":1}\n",
            "{\"id\":3,\"op\":\"create_2d\",\"width\":4,\"height\":4}\n",
            "{\"id\":4,\"op\":\"meminfo\"}\n",
            "{\"id\":5,\"op\":\"exit\",\"status\":3}\n",
            "{\"id\":6,\"op\":\"hello\"}\n",
        );
        let (r, status) = run(input);
        assert_eq!(status, 3);
        assert_eq!(r.len(), 6, "{r:?}");
        assert_eq!(r[0]["id"], 1);
        assert_eq!(r[0]["ok"], false);
        assert_eq!(r[0]["errno"], Value::Null);
        assert!(r[0]["error"].as_str().unwrap().starts_with("unknown op"));
        assert_eq!(r[1]["id"], Value::Null);
        assert_eq!(r[1]["ok"], false);
        assert_eq!(r[2]["id"], 2);
        assert!(r[2]["error"]
            .as_str()
            .unwrap()
            .contains("missing field `height`"));
        // Device op without a device: the open error, with its errno.
        assert_eq!(r[3]["id"], 3);
        assert_eq!(r[3]["ok"], false);
        assert_eq!(r[3]["errno"], 2);
        assert!(r[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("no virtio-gpu device"));
        // meminfo works anywhere Linux is.
        assert_eq!(r[4]["id"], 4);
        assert_eq!(r[4]["ok"], true);
        assert!(r[4]["MemTotal"].as_u64().unwrap() > 0);
        assert_eq!(r[5], json!({"id": 5, "ok": true}));
    }

    #[test]
    fn hog_drop_caches_vmstat_and_scanout_args() {
        let input = concat!(
            "{\"id\":1,\"op\":\"hog\",\"mib\":2}\n",
            "{\"id\":2,\"op\":\"hog\",\"mib\":1}\n",
            "{\"id\":3,\"op\":\"hog\",\"mib\":0}\n",
            "{\"id\":4,\"op\":\"hog\",\"mib\":18446744073709551615}\n",
            "{\"id\":5,\"op\":\"drop_caches\",\"level\":4}\n",
            "{\"id\":6,\"op\":\"vmstat\"}\n",
            "{\"id\":7,\"op\":\"scanout\",\"handle\":1,\"width\":8,\"height\":8}\n",
            "{\"id\":8,\"op\":\"hog\",\"mib\":1}\n",
        );
        let (r, status) = run(input);
        assert_eq!(status, 0);
        assert_eq!(r.len(), 8, "{r:?}");
        assert_eq!(r[0]["ok"], true, "{}", r[0]);
        assert_eq!(r[0]["mib"], 2);
        assert_eq!(r[0]["oom_killed"], false);
        assert!(r[0]["ms"].is_u64());
        let pid = r[0]["pid"].as_i64().unwrap();
        assert_eq!(r[1]["mib"], 1);
        assert_eq!(r[1]["pid"], pid);
        assert_eq!(r[2]["mib"], 0);
        assert_eq!(r[2]["pid"], Value::Null);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(r[3]["ok"], false);
        assert_eq!(r[3]["errno"], Value::Null);
        assert!(r[3]["error"].as_str().unwrap().contains("MemTotal"));
        assert_eq!(r[4]["ok"], false);
        assert!(r[4]["error"].as_str().unwrap().contains("1, 2 or 3"));
        assert_eq!(r[5]["ok"], true);
        assert!(r[5]["pswpin"].is_u64(), "{}", r[5]);
        assert!(r[5]["oom_kill"].is_u64(), "{}", r[5]);
        assert_eq!(r[6]["ok"], false);
        assert!(r[6]["error"]
            .as_str()
            .unwrap()
            .starts_with("no virtio-gpu device"));
        // Still held when the agent is dropped at EOF: killed then.
        assert_eq!(r[7]["mib"], 1);
        let pid = r[7]["pid"].as_i64().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn last_line_without_newline_and_long_lines() {
        let (r, status) = run("{\"id\":9,\"op\":\"exit\"}");
        assert_eq!((r.len(), status), (1, 0));
        assert_eq!(r[0]["ok"], true);

        let long = format!(
            "{}\n{{\"id\":1,\"op\":\"hello\"}}\n",
            "x".repeat(proto::MAX_LINE + 10)
        );
        let (r, _) = run(&long);
        assert_eq!(r.len(), 2);
        assert!(r[0]["error"].as_str().unwrap().contains("longer than"));
        assert_eq!(r[1]["id"], 1);
        assert_eq!(r[1]["ok"], true);
    }
}
