#!/usr/bin/env bash
# Install everything gpuswap needs on a bare Debian 12 (bookworm) x86_64 host.
# Idempotent: a second run with everything present only checks and prints.
set -euo pipefail

CACHE="${GPUSWAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuswap}"
BINDGEN_VERSION=0.73.2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

log() { printf '[setup] %s\n' "$*" >&2; }

# Packages from bookworm proper.
BOOKWORM_PKGS=(
	linux-source-6.12 rustc-web rust-web-src libclang-dev clang
	make patch flex bison bc libelf-dev libssl-dev cpio zstd xz-utils busybox-static
	seabios ipxe-qemu
	# qemu-scripts/build-qemu.sh (QEMU with the vhost-user-gpu blob patch)
	ninja-build libglib2.0-dev libpixman-1-dev python3-venv python3-pip libfdt-dev
)
# QEMU 10.0 lives in bookworm-backports (bookworm has 7.2, which lacks
# what vhost-user-gpu-pci needs from a modern backend).
# meson too: QEMU 10 needs >= 1.5, bookworm has 1.0.
# libvirt 11.3 too: the libvirt end-to-end test (images/libvirt-up.sh).
BACKPORTS_PKGS=(qemu-system-x86 qemu-system-gui qemu-system-data meson
	libvirt-daemon-system libvirt-clients)

missing=()
for p in "${BOOKWORM_PKGS[@]}" "${BACKPORTS_PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p'; }

if [ "${#missing[@]}" -gt 0 ] || [ "$(qemu_major)" != 10 ]; then
	log "installing: ${missing[*]:-(QEMU upgrade)}"
	list=/etc/apt/sources.list.d/gpuswap-backports.list
	if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$list" >/dev/null
	fi
	$SUDO apt-get update -qq
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get install -y -qq --no-install-recommends "${BOOKWORM_PKGS[@]}"
	$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
		"${BACKPORTS_PKGS[@]}"
else
	log "host packages present"
fi

# QEMU's configure runs its tests' TAP helper from Debian's python; the
# +ds source tarball does not bundle the wheel.
if ! /usr/bin/python3 -c 'import pycotap' 2>/dev/null; then
	log "installing pycotap 1.3.1 into /usr/bin/python3"
	$SUDO /usr/bin/python3 -m pip install -q --break-system-packages pycotap==1.3.1
fi

# bindgen-cli: Debian's 0.60 is too old for the kernel's Rust support.
BINDGEN="$CACHE/tools/bin/bindgen"
if ! "$BINDGEN" --version 2>/dev/null | grep -qx "bindgen $BINDGEN_VERSION"; then
	log "building bindgen-cli $BINDGEN_VERSION into $CACHE/tools"
	mkdir -p "$CACHE/tools"
	cargo install --locked --quiet --root "$CACHE/tools" bindgen-cli --version "$BINDGEN_VERSION"
fi

# cargo-fuzz on the nightly toolchain: `cargo xtask fuzz` and the fuzz part
# of `cargo xtask test` (crates/fuzz).
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
	log "installing the nightly toolchain (for cargo-fuzz)"
	rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	log "installing cargo-fuzz"
	cargo +nightly install --locked --quiet cargo-fuzz
fi

log "qemu:    $(qemu-system-x86_64 --version | head -1)"
log "rustc:   $(/usr/bin/rustc --version)"
log "bindgen: $("$BINDGEN" --version)"
log "fuzz:    $(cargo +nightly fuzz --version)"
log "linux:   $(ls /usr/src/linux-source-6.12.tar.xz)"
log "meson:   $(meson --version)"
log "libvirt: $(virsh --version)"
