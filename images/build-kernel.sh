#!/usr/bin/env bash
# Usage: images/build-kernel.sh [--variant debug|kasan|release] [--verbose] [--dry-run]
#
# Builds the gpuswap guest kernel and its out-of-tree Rust module(s):
#   Debian's /usr/src/linux-source-6.12.tar.xz
#   + guest-kernel-patches/series (applied in order with patch -p1)
#   + make tinyconfig + images/kernel.config [+ images/kernel-debug.config]
#   + every guest-kernel-patches/*/ directory holding a Kbuild file (M= build).
#
# --variant  debug (default; lockdep, DEBUG_LIST, ...; what tests use),
#            kasan (debug + KASAN, built with clang; the suite runs the
#            eviction, blob and stress tests on it too) or release
#            (kernel.config only).
# --verbose  stream the make output to stderr (default: only to the log).
# --dry-run  print the out/ directory these inputs map to and exit (0) without
#            building; stderr says whether it is built (e.g. for CI cache keys).
#
# Everything lives under $GPUSWAP_CACHE (default ~/.cache/gpuswap), never in
# the repository:
#   kernel/trees/<variant>-<basehash>/linux   the build tree, kept so that
#                                             later builds are incremental
#   kernel/<variant>-<hash>/out/              the result:
#       bzImage  modules/*.ko  versions.txt  config  System.map  inputs.txt
#       tools/gen_init_cpio (used by images/build-initramfs.sh)  .complete
# <hash> is a sha256 over all inputs: linux-source package version, series and
# patches, the variant's config fragments, rustc/bindgen/C compiler versions, this script and
# the module sources. <basehash> covers the same minus patches and modules:
# when the series changes, the tree's applied patches from the first changed
# one on are reverted (copies kept in <tree>/applied/), the rest of the series
# applied, and make rebuilds only what they touch (about 30 s); a change of
# module sources rebuilds only the modules (seconds). Any other change starts
# a fresh tree (7-9 min on 2 cores).
# With unchanged inputs a run only hashes and returns (well under a second).
#
# Progress goes to stderr. The last line on stdout is the out/ directory.
# Needs the packages from images/setup-host.sh. Non-interactive; safe to run
# concurrently (builds serialize on a lock).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/images/build-kernel.sh"
CACHE="${GPUSWAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuswap}"
TARBALL=/usr/src/linux-source-6.12.tar.xz
SRC_PKG=linux-source-6.12
PATCHES="$REPO/guest-kernel-patches"
RUSTC=/usr/bin/rustc
RUSTDOC=/usr/bin/rustdoc
BINDGEN="$CACHE/tools/bin/bindgen"
KEEP_TREES=2	# trees kept per variant (each is about 2 GB)

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

variant=debug
verbose=0
dry_run=0
while [ $# -gt 0 ]; do
	case "$1" in
	--variant) [ $# -ge 2 ] || usage; variant="$2"; shift 2 ;;
	--variant=*) variant="${1#*=}"; shift ;;
	--verbose|-v) verbose=1; shift ;;
	--dry-run) dry_run=1; shift ;;
	-h|--help) usage 0 ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done
# The kernel's C compiler: gcc, but clang for KASAN (Rust needs it there).
KCC=gcc
case "$variant" in
debug) FRAGMENTS=("$REPO/images/kernel.config" "$REPO/images/kernel-debug.config") ;;
kasan)
	FRAGMENTS=("$REPO/images/kernel.config" "$REPO/images/kernel-debug.config"
		"$REPO/images/kernel-kasan.config")
	KCC=clang
	;;
release) FRAGMENTS=("$REPO/images/kernel.config") ;;
*) die "--variant must be debug, kasan or release, not '$variant'" ;;
esac

# A caller's build environment (cargo, make) must not leak into Kbuild.
unset MAKEFLAGS MFLAGS MAKELEVEL RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTC_WRAPPER O
export KBUILD_BUILD_USER=gpuswap KBUILD_BUILD_HOST=gpuswap

# --- Prerequisites -----------------------------------------------------------
for f in "$TARBALL" "$RUSTC" "$RUSTDOC" "$BINDGEN" "$PATCHES/series"; do
	[ -e "$f" ] || die "missing $f (run images/setup-host.sh?)"
done
for tool in gcc "$KCC" make patch flex bison bc flock sha256sum; do
	command -v "$tool" >/dev/null || die "missing tool '$tool' (run images/setup-host.sh)"
done

# Make variables for every make call: Debian's rustc 1.96 (it has the
# matching library sources; rustup's has none) also for host proc-macros,
# and bindgen-cli from setup-host.sh.
MAKEVARS=(ARCH=x86_64 CC="$KCC" RUSTC="$RUSTC" RUSTDOC="$RUSTDOC" HOSTRUSTC="$RUSTC" BINDGEN="$BINDGEN")
JOBS="$(nproc)"

# --- Inputs and hashes ---------------------------------------------------------
# series: one patch per line; '#' comments and blank lines ignored.
mapfile -t SERIES < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$PATCHES/series")
for p in "${SERIES[@]}"; do
	[ -f "$PATCHES/$p" ] || die "guest-kernel-patches/series lists '$p', which does not exist"
done
# Out-of-tree modules: every guest-kernel-patches/<dir>/ with a Kbuild file.
MODULE_DIRS=()
for kb in "$PATCHES"/*/Kbuild; do
	if [ -e "$kb" ]; then
		MODULE_DIRS+=("$(dirname "$kb")")
	fi
done

pkg_version="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
rustc_version="$("$RUSTC" --version)"
bindgen_version="$("$BINDGEN" --version 2>&1 | head -n1)"
cc_version="$("$KCC" --version | head -n1)"

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

# base: everything but the patches and module sources.
base_manifest() {
	echo "variant $variant"
	echo "linux-source $SRC_PKG $pkg_version"
	echo "rustc $rustc_version"
	echo "bindgen $bindgen_version"
	echo "cc $cc_version"
	echo "script $(file_hash "$SELF")"
	local f
	for f in "${FRAGMENTS[@]}"; do
		echo "fragment ${f##*/} $(file_hash "$f")"
	done
}
patch_manifest() {
	echo "series $(file_hash "$PATCHES/series")"
	local p
	for p in "${SERIES[@]}"; do
		echo "patch $p $(file_hash "$PATCHES/$p")"
	done
}
module_manifest() {
	local d f
	for d in "${MODULE_DIRS[@]}"; do
		while IFS= read -r f; do
			echo "module ${f#"$PATCHES"/} $(file_hash "$f")"
		done < <(find "$d" -type f | LC_ALL=C sort)
	done
}
short_hash() { sha256sum | cut -c1-16; }

BASE_KEY="$(base_manifest | short_hash)"
PATCH_KEY="$(patch_manifest | short_hash)"
FULL_KEY="$({ base_manifest; patch_manifest; module_manifest; } | short_hash)"

TREES="$CACHE/kernel/trees"
TREE="$TREES/$variant-$BASE_KEY"
SRC="$TREE/linux"
WORK="$CACHE/kernel/$variant-$FULL_KEY"
OUT="$WORK/out"

if [ "$dry_run" = 1 ]; then
	log "tree: $TREE ($([ "$(cat "$TREE/built" 2>/dev/null)" = "$PATCH_KEY" ] && echo built || echo not built) with these patches)"
	log "out:  $OUT ($([ -e "$OUT/.complete" ] && echo built || echo not built))"
	echo "$OUT"
	exit 0
fi
if [ -e "$OUT/.complete" ]; then
	log "up to date: $OUT"
	echo "$OUT"
	exit 0
fi

mkdir -p "$TREES"
exec 9>"$CACHE/kernel/.lock"
if ! flock -n 9; then
	log "waiting for another kernel build (lock $CACHE/kernel/.lock)"
	flock 9
fi
if [ -e "$OUT/.complete" ]; then	# built while we waited
	echo "$OUT"
	exit 0
fi

START=$(date +%s)
LOG="$TREE/build.log"

# Run make in the tree, output to the log (and stderr with --verbose).
kmake() {
	local dir="$1"; shift
	local rc=0
	if [ "$verbose" = 1 ]; then
		make -C "$dir" "${MAKEVARS[@]}" "$@" 2>&1 | tee -a "$LOG" >&2 || rc=$?
	else
		make -C "$dir" "${MAKEVARS[@]}" "$@" >>"$LOG" 2>&1 || rc=$?
	fi
	if [ "$rc" != 0 ]; then
		tail -n 60 "$LOG" >&2
		die "make $* failed (full log: $LOG)"
	fi
}

# --- Tree: extract once, then keep the applied patches in sync with series --
extract_tree() {
	rm -rf "$TREE"
	mkdir -p "$SRC" "$TREE/applied"
	: >"$LOG"
	log "extracting $TARBALL ($SRC_PKG $pkg_version)"
	tar -xf "$TARBALL" -C "$SRC" --strip-components=1 --no-same-owner
	: >"$TREE/applied/series"
	base_manifest >"$TREE/inputs.txt"
	touch "$TREE/.extracted"
}

# The patches applied now / wanted by series: "name sha256" lines, in order.
applied_patches() {
	local p
	while IFS= read -r p; do
		echo "$p $(file_hash "$TREE/applied/$p")"
	done <"$TREE/applied/series"
}
wanted_patches() {
	local p
	for p in "${SERIES[@]}"; do
		echo "$p $(file_hash "$PATCHES/$p")"
	done
}

# Reverts applied patches from number $1 (0-based) on, newest first, using the
# copies in applied/, and drops them from applied/series.
revert_applied() {
	local keep="$1" p
	while IFS= read -r p; do
		log "reverting $p"
		patch -d "$SRC" -p1 -R -s --batch --no-backup-if-mismatch \
			-i "$TREE/applied/$p" >>"$LOG" 2>&1 || return 1
	done < <(tail -n +$((keep + 1)) "$TREE/applied/series" | tac)
	head -n "$keep" "$TREE/applied/series" >"$TREE/applied/series.new"
	mv "$TREE/applied/series.new" "$TREE/applied/series"
}

# Applies the series from patch number $1 on. Each patch is checked with
# --dry-run first, so one that does not apply leaves the tree as it was.
apply_series() {
	local keep="$1" p i out
	for ((i = keep; i < ${#SERIES[@]}; i++)); do
		p="${SERIES[$i]}"
		log "applying $p"
		if ! out="$(patch -d "$SRC" -p1 -N --batch --dry-run -i "$PATCHES/$p" 2>&1)"; then
			printf '%s\n' "$out" >&2
			die "patch $p does not apply to $SRC_PKG $pkg_version (after the patches before it in series)"
		fi
		mkdir -p "$TREE/applied/$(dirname "$p")"
		cp "$PATCHES/$p" "$TREE/applied/$p"
		# Recorded before applying, so that an interrupted run reverts it.
		echo "$p" >>"$TREE/applied/series"
		patch -d "$SRC" -p1 -N --batch --no-backup-if-mismatch \
			-i "$TREE/applied/$p" >>"$LOG" 2>&1 || die "patch $p failed (log: $LOG)"
	done
}

# Brings the tree's patches in line with series. Patches up to the first
# difference stay applied, so their files keep their mtimes and are not
# recompiled.
sync_patches() {
	local -a have want
	local keep=0
	mapfile -t have < <(applied_patches)
	mapfile -t want < <(wanted_patches)
	while [ "$keep" -lt "${#have[@]}" ] && [ "$keep" -lt "${#want[@]}" ] &&
		[ "${have[$keep]}" = "${want[$keep]}" ]; do
		keep=$((keep + 1))
	done
	if [ "$keep" = "${#have[@]}" ] && [ "$keep" = "${#want[@]}" ]; then
		return
	fi
	if ! revert_applied "$keep"; then
		log "the tree's patches do not revert cleanly; extracting again"
		extract_tree
		keep=0
	fi
	apply_series "$keep"
}

# --- Config: tinyconfig + fragments, then check every fragment line held --------
configure_tree() {
	log "configuring: tinyconfig + ${FRAGMENTS[*]##*/}"
	kmake "$SRC" tinyconfig
	(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}") >>"$LOG" 2>&1 ||
		die "merge_config.sh failed (log: $LOG)"
	kmake "$SRC" olddefconfig

	# Later fragments override earlier ones, as in merge_config.sh.
	local -A want=()
	local -a order=()
	local frag line opt val got bad=0
	for frag in "${FRAGMENTS[@]}"; do
		while IFS= read -r line; do
			if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
				opt="${BASH_REMATCH[1]}"; val="${BASH_REMATCH[2]}"
			elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
				opt="${BASH_REMATCH[1]}"; val="n"
			else
				continue
			fi
			[ -n "${want[$opt]+x}" ] || order+=("$opt")
			want[$opt]="$val"
		done <"$frag"
	done
	for opt in "${order[@]}"; do
		got="$(sed -n "s/^$opt=//p" "$SRC/.config")"
		[ -n "$got" ] || got=n
		if [ "$got" != "${want[$opt]}" ]; then
			log "config check: $opt=${want[$opt]} requested, but olddefconfig gave $opt=$got"
			bad=1
		fi
	done
	# CONFIG_RUST drops silently when the toolchain check fails
	# (`make rustavailable` says why) or a conflicting option is on
	# (MODVERSIONS, RANDSTRUCT, DEBUG_INFO_BTF, KASAN with gcc).
	[ "$bad" = 0 ] || die "required kernel options did not survive olddefconfig (see above; .config: $SRC/.config)"
	log "config check: all ${#order[@]} requested options hold (CONFIG_RUST=y)"
}

# Old trees (other fragments, toolchain or script): keep the most recently
# used few of this variant.
prune_trees() {
	local t
	# shellcheck disable=SC2012 # our own directory names, sorted by mtime
	ls -1dt "$TREES/$variant"-*/.extracted 2>/dev/null | tail -n +$((KEEP_TREES + 1)) |
		while IFS= read -r t; do
			t="$(dirname "$t")"
			[ "$t" = "$TREE" ] && continue
			log "pruning old tree $(basename "$t")"
			rm -rf "$t"
		done
}

if [ "$(cat "$TREE/built" 2>/dev/null)" != "$PATCH_KEY" ]; then
	[ -e "$TREE/.extracted" ] || extract_tree
	rm -f "$TREE/built"
	: >"$LOG"
	sync_patches
	configure_tree
	log "building bzImage modules with -j$JOBS (log: $LOG)"
	kmake "$SRC" -j"$JOBS" bzImage modules
	echo "$PATCH_KEY" >"$TREE/built"
	log "kernel built in $(($(date +%s) - START)) s"
	prune_trees
else
	log "kernel tree up to date: $TREE"
fi

# --- Out-of-tree Rust modules, built on a copy outside the repo ----------------
rm -rf "$WORK/modsrc" "$WORK/out.tmp" "$OUT"
mkdir -p "$WORK/modsrc" "$WORK/out.tmp/modules" "$WORK/out.tmp/tools"
for d in "${MODULE_DIRS[@]}"; do
	name="$(basename "$d")"
	log "building module $name"
	cp -a "$d" "$WORK/modsrc/$name"
	kmake "$SRC" M="$WORK/modsrc/$name" modules
	find "$WORK/modsrc/$name" -name '*.ko' -exec cp {} "$WORK/out.tmp/modules/" \;
done
# In-tree modules too, should a fragment ever select one as =m.
if [ -f "$SRC/modules.order" ]; then
	while IFS= read -r m; do
		m="${m%.ko}"
		cp "$SRC/${m%.o}.ko" "$WORK/out.tmp/modules/"
	done <"$SRC/modules.order"
fi

# --- Result ------------------------------------------------------------------------
cp "$SRC/arch/x86/boot/bzImage" "$SRC/System.map" "$WORK/out.tmp/"
cp "$SRC/.config" "$WORK/out.tmp/config"
cp "$SRC/usr/gen_init_cpio" "$WORK/out.tmp/tools/"
{ base_manifest; patch_manifest; module_manifest; } >"$WORK/out.tmp/inputs.txt"
{
	echo "kernel_release=$(make -s --no-print-directory -C "$SRC" "${MAKEVARS[@]}" kernelrelease)"
	echo "kernel_version=$(sed -n 's/^#define UTS_VERSION[[:space:]]*"\(.*\)"/\1/p' "$SRC/include/generated/utsversion.h")"
	echo "compiler=$(sed -n 's/^#define LINUX_COMPILER[[:space:]]*"\(.*\)"/\1/p' "$SRC/include/generated/compile.h")"
	echo "variant=$variant"
	echo "linux_source=$SRC_PKG $pkg_version"
	echo "patches=${SERIES[*]:-(none)}"
	echo "rustc=$rustc_version"
	echo "bindgen=$bindgen_version"
	echo "cc=$cc_version"
	echo "hash=$FULL_KEY"
	echo "tree=$SRC"
} >"$WORK/out.tmp/versions.txt"
mv "$WORK/out.tmp" "$OUT"
touch "$OUT/.complete" "$TREE/.extracted"	# its mtime marks the tree as recently used
log "done in $(($(date +%s) - START)) s; modules: $(find "$OUT/modules" -name '*.ko' -printf '%f ')"
echo "$OUT"
