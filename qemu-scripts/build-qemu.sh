#!/usr/bin/env bash
# Usage: qemu-scripts/build-qemu.sh
#
# Builds a blob-capable qemu-system-x86_64: Debian's QEMU source tarball
# (the version of the installed bookworm-backports qemu-system-x86, fetched
# with apt-get source) plus qemu-scripts/0*.patch, x86_64-softmmu only.
# The build is cached in $GPUSWAP_CACHE/qemu/<key>/, key = hash of the
# source version, the patches and this script; a second run with unchanged
# inputs only checks the cache. The last stdout line is the binary's path.
# Needs root (or sudo) once, to add a deb-src line for bookworm-backports.
# Build dependencies: images/setup-host.sh. See qemu-scripts/README.md.
set -euo pipefail

CACHE="${GPUSWAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuswap}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

log() { printf '[build-qemu] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version="$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)" ||
	die "qemu-system-x86 is not installed (run images/setup-host.sh)"
upstream="${version#*:}"	# 1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2+ds-2+...
upstream="${upstream%%-*}"	# -> 10.0.2+ds
tarball_name="qemu_${upstream}.orig.tar.xz"

mapfile -t patches < <(find "$HERE" -maxdepth 1 -name '0*.patch' | sort)
[ "${#patches[@]}" -gt 0 ] || die "no qemu-scripts/0*.patch found"

key="$(
	{
		echo "qemu $version"
		for p in "${patches[@]}"; do basename "$p"; cat "$p"; done
		cat "${BASH_SOURCE[0]}"
	} | sha256sum | cut -c1-16
)"
out="$CACHE/qemu/$key"
bin="$out/qemu-system-x86_64"

# One build at a time: a second caller waits, then finds the cache.
mkdir -p "$CACHE/qemu"
exec 9>"$CACHE/qemu/.lock"
flock 9

if [ -x "$bin" ] && [ -f "$out/ok" ]; then
	log "cached: $bin ($(head -n1 "$out/ok"))"
	echo "$bin"
	exit 0
fi

for tool in meson ninja; do
	command -v "$tool" >/dev/null || die "$tool missing (run images/setup-host.sh)"
done
/usr/bin/python3 -c 'import pycotap' 2>/dev/null ||
	die "pycotap missing in /usr/bin/python3 (run images/setup-host.sh)"

# --- Source tarball -------------------------------------------------------------
src_cache="$CACHE/qemu/src"
tarball="$src_cache/$tarball_name"
if [ ! -s "$tarball" ]; then
	if ! grep -rqs '^deb-src .*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		log "adding a deb-src line for bookworm-backports"
		echo 'deb-src http://deb.debian.org/debian bookworm-backports main' |
			$SUDO tee /etc/apt/sources.list.d/gpuswap-backports-src.list >/dev/null
		$SUDO apt-get update -qq
	fi
	mkdir -p "$src_cache"
	dl="$(mktemp -d "$src_cache/dl.XXXXXX")"
	log "fetching qemu=$version source (the .dsc/.debian.tar.xz 404s are expected)"
	# Only the orig tarball exists on the mirror: ignore apt's exit code and
	# check for the tarball instead.
	(cd "$dl" && chmod 755 . && apt-get source --download-only -qq "qemu=$version" >&2) || true
	[ -s "$dl/$tarball_name" ] || { rm -rf "$dl"; die "apt-get source did not fetch $tarball_name"; }
	mv "$dl/$tarball_name" "$tarball"
	rm -rf "$dl"
fi

# --- Build ------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out"
build="$out/src"
log "building QEMU $upstream with ${#patches[@]} patch(es) in $out (about 6 min on 2 cores)"
start=$SECONDS
mkdir -p "$build"
tar -xJf "$tarball" -C "$build" --strip-components=1
for p in "${patches[@]}"; do
	log "applying $(basename "$p")"
	patch -d "$build" -p1 --forward --batch <"$p" >&2 || die "$(basename "$p") does not apply"
done
# The +ds tarball has no firmware blobs, but pc-bios/meson.build still lists
# the edk2 images: empty stand-ins (never installed, never used on x86 here).
# The binary searches Debian's firmware (qemu-system-data, seabios,
# ipxe-qemu) by itself (--firmwarepath, as Debian's own build does), so it
# runs without -L wherever it is started from, libvirt included.
edk2=$(sed -n "s/.*'\(edk2-[^']*\.fd\)'.*/\1/p" "$build/pc-bios/meson.build" | sort -u)
[ -n "$edk2" ] || die "no edk2 images listed in pc-bios/meson.build"
for f in $edk2; do
	[ -e "$build/pc-bios/$f.bz2" ] || : >"$build/pc-bios/$f.bz2"
done
log "$(echo "$edk2" | wc -l) edk2 stand-ins"
(
	cd "$build"
	./configure --python=/usr/bin/python3 --target-list=x86_64-softmmu \
		--without-default-features --enable-tcg --enable-kvm --enable-vhost-user \
		--enable-pixman --disable-docs --disable-install-blobs \
		--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu >&2
	make -j"$(nproc)" qemu-system-x86_64 >&2
) || die "QEMU build failed (tree left in $build)"
cp "$build/build/qemu-system-x86_64" "$bin"
"$bin" --version | head -n1 >&2 || die "built binary does not run"
# The build tree stays in $out/src: after editing a patch, a rebuild
# from scratch is keyed anew anyway, but the tree is handy for debugging.
{
	echo "QEMU $version + $(for p in "${patches[@]}"; do basename "$p"; done | tr '\n' ' ')"
	echo "built in $((SECONDS - start)) s on $(date -u +%FT%TZ)"
} >"$out/ok"
log "built in $((SECONDS - start)) s: $bin"
echo "$bin"
