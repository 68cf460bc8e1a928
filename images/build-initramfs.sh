#!/usr/bin/env bash
# Usage: images/build-initramfs.sh --kernel-out DIR --guest-tool PATH|none [--out FILE]
#
# Packs the gpuswap guest initramfs (gzip'd newc cpio):
#   /init                 images/init
#   /bin/busybox + applet symlinks (Debian busybox-static)
#   /bin/gpuswap-guest    the --guest-tool binary; it must be statically
#                         linked (cargo build --release --target
#                         x86_64-unknown-linux-gnu with
#                         RUSTFLAGS="-C target-feature=+crt-static")
#   /lib/modules/*.ko     every module in DIR/modules (DIR is the out/
#                         directory printed by images/build-kernel.sh)
#
# --kernel-out DIR   kernel output directory (needs modules/ and
#                    tools/gen_init_cpio, which packs the archive with fixed
#                    owners and timestamps, so no root or mknod is needed)
# --guest-tool PATH  the guest tool; `--guest-tool none` leaves it out
#                    (gpuswap.cmd=agent then fails with status 127)
# --out FILE         also copy the result to FILE (printed instead)
#
# The archive is cached as $GPUSWAP_CACHE/initramfs/<hash>/initramfs.cpio.gz,
# <hash> being a sha256 over every input file and this script; a rebuild with
# unchanged inputs only hashes. Same inputs give a byte-identical archive.
# The 20 most recently used archives are kept.
# Progress goes to stderr; the last line on stdout is the archive's path.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/images/build-initramfs.sh"
INIT="$REPO/images/init"
CACHE="${GPUSWAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuswap}"
BUSYBOX=/bin/busybox
KEEP=20	# cached archives kept (3-4 MB each)

log() { printf '[build-initramfs] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

kernel_out=""
guest_tool=""
out_file=""
while [ $# -gt 0 ]; do
	case "$1" in
	--kernel-out) [ $# -ge 2 ] || usage; kernel_out="$2"; shift 2 ;;
	--guest-tool) [ $# -ge 2 ] || usage; guest_tool="$2"; shift 2 ;;
	--out) [ $# -ge 2 ] || usage; out_file="$2"; shift 2 ;;
	--kernel-out=*) kernel_out="${1#*=}"; shift ;;
	--guest-tool=*) guest_tool="${1#*=}"; shift ;;
	--out=*) out_file="${1#*=}"; shift ;;
	-h|--help) usage 0 ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done
[ -n "$kernel_out" ] || { log "--kernel-out is required"; usage; }
[ -n "$guest_tool" ] || { log "--guest-tool is required (PATH or 'none')"; usage; }

GEN_INIT_CPIO="$kernel_out/tools/gen_init_cpio"
[ -e "$kernel_out/.complete" ] || die "$kernel_out is not a complete images/build-kernel.sh output"
[ -x "$GEN_INIT_CPIO" ] || die "missing $GEN_INIT_CPIO"
[ -x "$BUSYBOX" ] || die "missing $BUSYBOX (apt-get install busybox-static; see images/setup-host.sh)"

# A dynamically linked binary would fail in the guest with a puzzling
# "not found": there is no libc in the initramfs.
require_static() {
	if readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; then
		die "$1 is dynamically linked; the initramfs has no libc (build it with RUSTFLAGS=\"-C target-feature=+crt-static\")"
	fi
}
require_static "$BUSYBOX"
if [ "$guest_tool" = none ]; then
	log "no guest tool: gpuswap.cmd=agent will not work with this initramfs"
	guest_tool=""
else
	[ -f "$guest_tool" ] || die "guest tool $guest_tool does not exist"
	require_static "$guest_tool"
fi

# Work on copies: the guest tool may be rebuilt by cargo while we run, and
# the cache entry must hold exactly what was hashed.
mkdir -p "$CACHE/initramfs"
STAGE="$(mktemp -d "$CACHE/initramfs/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/modules"
if [ -n "$guest_tool" ]; then
	cp "$guest_tool" "$STAGE/gpuswap-guest"
	guest_tool="$STAGE/gpuswap-guest"
fi
shopt -s nullglob
for ko in "$kernel_out"/modules/*.ko; do
	cp "$ko" "$STAGE/modules/"
done
MODULES=("$STAGE"/modules/*.ko)
shopt -u nullglob

# --- Hash of all inputs -----------------------------------------------------------
file_hash() { sha256sum "$1" | cut -d' ' -f1; }
manifest() {
	local ko
	echo "script $(file_hash "$SELF")"
	echo "init $(file_hash "$INIT")"
	echo "busybox $(file_hash "$BUSYBOX")"
	echo "gen_init_cpio $(file_hash "$GEN_INIT_CPIO")"
	echo "guest-tool ${guest_tool:+$(file_hash "$guest_tool")}"
	for ko in "${MODULES[@]}"; do
		echo "module $(basename "$ko") $(file_hash "$ko")"
	done
}
KEY="$(manifest | sha256sum | cut -c1-16)"
DIR="$CACHE/initramfs/$KEY"
RESULT="$DIR/initramfs.cpio.gz"

exec 9>"$CACHE/initramfs/.lock"
if [ ! -e "$DIR/.complete" ]; then
	flock 9	# a concurrent run may be packing the same archive
fi
if [ -e "$DIR/.complete" ]; then
	log "up to date: $RESULT"
else
	log "packing $RESULT"
	rm -rf "$DIR"
	mkdir -p "$DIR"
	manifest >"$DIR/inputs.txt"

	# gen_init_cpio list: directories, the console node, files, symlinks.
	list="$DIR/cpio.list"
	{
		for d in /bin /sbin /usr /usr/bin /usr/sbin /lib /lib/modules \
			/dev /proc /sys /tmp /run /root /etc /mnt; do
			echo "dir $d 0755 0 0"
		done
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		echo "file /init $INIT 0755 0 0"
		echo "file /bin/busybox $BUSYBOX 0755 0 0"
		"$BUSYBOX" --list-full | LC_ALL=C sort | while IFS= read -r applet; do
			case "$applet" in
			bin/busybox) ;;
			*/*) echo "slink /$applet /bin/busybox 0777 0 0" ;;
			*) ;;	# linuxrc: we have our own /init
			esac
		done
		if [ -n "$guest_tool" ]; then
			echo "file /bin/gpuswap-guest $guest_tool 0755 0 0"
		fi
		for ko in "${MODULES[@]}"; do
			echo "file /lib/modules/$(basename "$ko") $ko 0644 0 0"
		done
	} >"$list"

	"$GEN_INIT_CPIO" -t 0 "$list" | gzip -9 -n >"$RESULT.tmp"
	mv "$RESULT.tmp" "$RESULT"
	touch "$DIR/.complete"
	log "$(du -h "$RESULT" | cut -f1) with ${#MODULES[@]} module(s)${guest_tool:+ and gpuswap-guest}"
fi
touch "$DIR/.complete"	# mtime = last use
# Keep the KEEP most recently used archives (each guest tool build makes one).
# shellcheck disable=SC2012 # our own directory names, sorted by mtime
ls -1dt "$CACHE"/initramfs/*/.complete | tail -n +$((KEEP + 1)) | while IFS= read -r old; do
	rm -rf "$(dirname "$old")"
done

if [ -n "$out_file" ]; then
	mkdir -p "$(dirname "$out_file")"
	cp "$RESULT" "$out_file.tmp.$$"
	mv "$out_file.tmp.$$" "$out_file"
	RESULT="$(realpath "$out_file")"
fi
echo "$RESULT"
