#!/usr/bin/env bash
# Usage: images/libvirt-up.sh
#
# Makes the system libvirtd (qemu:///system) usable on a machine without
# systemd, as in a container or a CI runner: a qemu.conf that runs QEMU as
# root without cgroups, namespaces or a security driver, then virtlogd and
# libvirtd as plain processes. Idempotent: with both running and the
# configuration in place it only checks. Packages: images/setup-host.sh.
set -euo pipefail

log() { printf '[libvirt-up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (it edits /etc/libvirt/qemu.conf and starts libvirtd)"
command -v libvirtd >/dev/null || die "libvirt is not installed (run images/setup-host.sh)"

conf=/etc/libvirt/qemu.conf
begin='# >>> gpuswap libvirt-up: no systemd, no cgroups, no security driver'
end='# <<< gpuswap libvirt-up'
block="$begin
user = \"root\"
group = \"root\"
cgroup_controllers = [ ]
namespaces = [ ]
security_driver = \"none\"
$end"
changed=0
ours() { awk -v b="$begin" -v e="$end" '$0 == b {on = 1} on {print} $0 == e {on = 0}' "$conf"; }
if [ "$(ours)" != "$block" ]; then
	awk -v b="$begin" -v e="$end" '$0 == b {on = 1} !on {print} $0 == e {on = 0}' "$conf" >"$conf.new"
	mv "$conf.new" "$conf"
	printf '%s\n' "$block" >>"$conf"
	changed=1
	log "configured $conf"
fi

running() { pgrep -x "$1" >/dev/null; }
if [ "$changed" = 1 ] && running libvirtd; then
	log "restarting libvirtd for the new configuration"
	pkill -x libvirtd
	for _ in $(seq 50); do running libvirtd || break; sleep 0.1; done
fi
running virtlogd || { log "starting virtlogd"; /usr/sbin/virtlogd -d; }
if ! running libvirtd; then
	log "starting libvirtd"
	# Its warnings about DBus, DMI and /dev/mem are harmless here.
	/usr/sbin/libvirtd -d
fi
for _ in $(seq 100); do
	if virsh -c qemu:///system version >/dev/null 2>&1; then
		log "$(virsh -c qemu:///system version | grep -E 'libvirt|hypervisor' | tr '\n' ' ')"
		exit 0
	fi
	sleep 0.1
done
die "libvirtd does not answer on qemu:///system"
