//! gpuswap-daemon under libvirt: the system libvirtd started without
//! systemd (`images/libvirt-up.sh`), the daemon installed the way a user
//! installs it (binary, its configuration file, a vhost-user descriptor
//! libvirt finds by itself), and a domain from
//! `qemu-scripts/libvirt/gpuswap-domain.xml`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gpuswap_harness::{root, Images, Result, ScratchDir};

/// The libvirt connection the tests use.
pub const URI: &str = "qemu:///system";

/// Where libvirt looks for vhost-user descriptors besides
/// /usr/share/qemu/vhost-user; files here sort with those by name.
const DESCRIPTOR_DIR: &str = "/etc/qemu/vhost-user";
/// Sorts before QEMU's own `50-qemu-gpu.json` and an installed
/// `50-gpuswap-gpu.json`, so libvirt picks the binary under test.
const DESCRIPTOR_NAME: &str = "10-gpuswap-test.json";

/// Installs libvirt's configuration for this machine and starts
/// virtlogd and libvirtd if they are not running.
pub fn up() -> Result<()> {
    let out = Command::new("bash")
        .arg(root().join("images/libvirt-up.sh"))
        .output()
        .map_err(|e| format!("cannot run images/libvirt-up.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "images/libvirt-up.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs `virsh -c URI ARGS`, returning its stdout.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The daemon installed under a prefix in the run directory, as
/// `cargo xtask install` installs it under /usr/local: the binary in
/// `libexec/`, its configuration in `etc/gpuswap/daemon.conf` (found by
/// the binary itself, since libvirt passes nothing but `--fd`), and a
/// descriptor naming it. The descriptor is removed on drop.
pub struct Installed {
    pub binary: PathBuf,
    /// Control sockets appear here as `control-PID.sock`, logs as
    /// `daemon-PID.log`.
    pub control_dir: PathBuf,
    descriptor: PathBuf,
}

impl Installed {
    pub fn new(images: &Images, dir: &ScratchDir) -> Result<Installed> {
        let prefix = dir.join("prefix");
        let binary = prefix.join("libexec/gpuswap-daemon");
        let conf = prefix.join("etc/gpuswap/daemon.conf");
        let control_dir = dir.join("control");
        for d in [binary.parent(), conf.parent(), Some(control_dir.as_path())] {
            let d = d.expect("a parent");
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::copy(&images.daemon, &binary)
            .map_err(|e| format!("{} -> {}: {e}", images.daemon.display(), binary.display()))?;
        std::fs::write(
            &conf,
            format!(
                "# written by the libvirt test\n\
                 control-socket = {0}/control-{{pid}}.sock\n\
                 log-file = {0}/daemon-{{pid}}.log\n",
                control_dir.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        std::fs::create_dir_all(DESCRIPTOR_DIR).map_err(|e| format!("{DESCRIPTOR_DIR}: {e}"))?;
        let descriptor = Path::new(DESCRIPTOR_DIR).join(DESCRIPTOR_NAME);
        let json = serde_json::json!({
            "description": "gpuswap-daemon under test (tests/src/libvirt.rs)",
            "type": "gpu",
            "binary": binary,
        });
        std::fs::write(&descriptor, format!("{json:#}\n"))
            .map_err(|e| format!("{}: {e}", descriptor.display()))?;
        Ok(Installed {
            binary,
            control_dir,
            descriptor,
        })
    }

    /// The daemons libvirt started: (pid, control socket).
    pub fn daemons(&self) -> Vec<(u32, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.control_dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix("control-")?.strip_suffix(".sock")?;
                Some((pid.parse().ok()?, e.path()))
            })
            .collect()
    }

    /// The log of the daemon with process id `pid`.
    pub fn log(&self, pid: u32) -> String {
        std::fs::read_to_string(self.control_dir.join(format!("daemon-{pid}.log")))
            .unwrap_or_default()
    }

    /// Waits for exactly one daemon to serve a control socket.
    pub fn wait_daemon(&self, timeout: Duration) -> Result<(u32, PathBuf)> {
        let deadline = Instant::now() + timeout;
        loop {
            let daemons = self.daemons();
            match daemons.as_slice() {
                [one] => return Ok(one.clone()),
                [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                [] => return Err(format!("no daemon control socket within {timeout:?}")),
                more => return Err(format!("more than one daemon: {more:?}")),
            }
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.descriptor);
    }
}

/// Whether process `pid` still exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// The pid libvirt recorded for a domain's vhost-user GPU backend
/// (`/run/libvirt/qemu/*-DOMAIN-*-vhost-user-gpu.pid`), if running.
pub fn backend_pid(domain: &str) -> Option<u32> {
    std::fs::read_dir("/run/libvirt/qemu")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(domain) && name.ends_with("-vhost-user-gpu.pid")
        })
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// A process's command line, arguments split.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// What to boot.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub memory_mib: u32,
    pub emulator: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub serial_log: &'a Path,
    pub agent_socket: &'a Path,
}

impl DomainSpec<'_> {
    /// The domain XML: the template with the placeholders filled in.
    pub fn xml(&self) -> Result<String> {
        let template = root().join("qemu-scripts/libvirt/gpuswap-domain.xml");
        let text = std::fs::read_to_string(&template)
            .map_err(|e| format!("{}: {e}", template.display()))?;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('\'', "&apos;")
        };
        let path = |p: &Path| esc(&p.to_string_lossy());
        let filled = text
            .replace("@NAME@", &esc(self.name))
            .replace("@MEMORY_MIB@", &self.memory_mib.to_string())
            .replace("@EMULATOR@", &path(self.emulator))
            .replace("@KERNEL@", &path(self.kernel))
            .replace("@INITRD@", &path(self.initrd))
            .replace("@CMDLINE@", &esc(self.cmdline))
            .replace("@SERIAL_LOG@", &path(self.serial_log))
            .replace("@AGENT_SOCKET@", &path(self.agent_socket));
        // Only the comment names the placeholders once they are filled.
        let body = filled.split_once("-->").map_or(filled.as_str(), |(_, b)| b);
        if let Some(at) = body.find('@') {
            return Err(format!(
                "unfilled placeholder in the template near {:?}",
                &body[at..]
            ));
        }
        Ok(filled)
    }
}

/// A defined domain, destroyed and undefined on drop.
pub struct Domain {
    pub name: String,
}

impl Domain {
    /// Defines the domain from `xml` (written to `xml_path`), replacing a
    /// leftover of the same name.
    pub fn define(name: &str, xml: &str, xml_path: &Path) -> Result<Domain> {
        std::fs::write(xml_path, xml).map_err(|e| format!("{}: {e}", xml_path.display()))?;
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
        virsh(&["define", &xml_path.to_string_lossy()])?;
        Ok(Domain { name: name.into() })
    }

    pub fn start(&self) -> Result<()> {
        virsh(&["start", &self.name]).map(drop)
    }

    pub fn destroy(&self) -> Result<()> {
        virsh(&["destroy", &self.name]).map(drop)
    }

    /// `running`, `shut off`, ...
    pub fn state(&self) -> Result<String> {
        virsh(&["domstate", &self.name]).map(|s| s.trim().to_string())
    }

    /// Waits until the domain is shut off (the guest's /init reboots, the
    /// domain's on_reboot is destroy).
    pub fn wait_shutoff(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state()?;
            if state == "shut off" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "domain {} still {state} after {timeout:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// libvirt's log of this domain's QEMU (its command line included).
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", self.name))
            .unwrap_or_default()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}
