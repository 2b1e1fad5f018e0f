#!/usr/bin/env bash
# guest-kernel/build.sh: build the Linux guest that slicevisor's end-to-end tests boot.
#
#   <repo>/target/guest/vmlinux         ELF vmlinux (entered through its Xen PVH note)
#   <repo>/target/guest/initramfs.cpio  uncompressed newc cpio: static busybox + init.sh
#
# The kernel is Debian's linux-source-6.1 plus guest-kernel/patches/*.patch, configured
# as `make tinyconfig` + guest-kernel/config.fragment. The source/build tree lives outside
# git in ${SLICEVISOR_CACHE:-/var/cache/slicevisor}/linux-6.1 and is reused between runs.
# Idempotent; a run with nothing changed takes seconds. See guest-kernel/README.md.
#
# Environment:
#   SLICEVISOR_CACHE          cache root (default /var/cache/slicevisor)
#   SLICEVISOR_GUEST_VERBOSE  1 = stream kernel build output to stderr instead of a log file
#
# Progress goes to stderr; stdout gets only the two output paths.
set -euo pipefail

export LC_ALL=C
# Keep the caller's make/kbuild settings (e.g. from cargo or a parent make) out of the
# kernel build.
unset ARCH CROSS_COMPILE LLVM KBUILD_OUTPUT KCONFIG_CONFIG MAKEFLAGS MFLAGS MAKELEVEL \
    MAKEOVERRIDES || true

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
cache_root=${SLICEVISOR_CACHE:-/var/cache/slicevisor}
tree=$cache_root/linux-6.1
buildlog=$cache_root/linux-6.1.build.log
tarball=/usr/src/linux-source-6.1.tar.xz
fragment=$here/config.fragment
init_script=$here/init.sh
out_dir=$repo/target/guest
jobs=$(nproc)
kmake=(make -C "$tree" KBUILD_BUILD_USER=slicevisor KBUILD_BUILD_HOST=slicevisor)

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Run a command with its output in $buildlog (or on stderr when verbose); on failure
# show the tail of the log and stop.
run() {
    if [[ ${SLICEVISOR_GUEST_VERBOSE:-0} == 1 ]]; then
        "$@" >&2 || die "command failed: $*"
        return 0
    fi
    printf '\n### %s\n' "$*" >>"$buildlog"
    if ! "$@" >>"$buildlog" 2>&1; then
        log "command failed: $*"
        log "last lines of $buildlog:"
        tail -n 60 "$buildlog" >&2
        die "command failed: $* (full log: $buildlog)"
    fi
}

# --- 1. build dependencies ------------------------------------------------------------
# (patch and libc6-dev are not pulled in by the others on a minimal Debian 12)
pkgs=(linux-source-6.1 bc flex bison libelf-dev libssl-dev busybox-static cpio xz-utils
    make gcc libc6-dev patch)
missing=()
for p in "${pkgs[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (run as root, or install them)"
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
[[ -f $tarball ]] || die "$tarball not found (package linux-source-6.1)"
[[ -f $fragment ]] || die "$fragment not found"
[[ -f $init_script ]] || die "$init_script not found"

# --- 2. cache dir and lock (concurrent runs wait for each other) ----------------------
mkdir -p "$cache_root" || die "cannot create $cache_root (run as root, or set SLICEVISOR_CACHE)"
exec 9>"$cache_root/linux-6.1.lock"
if ! flock -n 9; then
    log "another build.sh holds $cache_root/linux-6.1.lock; waiting"
    flock 9
fi
: >"$buildlog"

# --- 3. source tree: extract + patch once per (tarball, patch set) ---------------------
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
source_id=$(
    {
        echo "tarball $(stat -c '%s %Y' "$tarball")"
        echo "linux-source-6.1 $(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)"
        for p in "${patches[@]}"; do
            echo "patch $(basename "$p") $(sha256sum <"$p" | cut -d' ' -f1)"
        done
    } | sha256sum | cut -d' ' -f1
)
if [[ "$(cat "$tree/.slicevisor-source" 2>/dev/null || true)" != "$source_id" ]]; then
    if [[ -d $tree ]]; then
        log "tarball or patches changed: re-extracting $tree from scratch"
    fi
    log "extracting $tarball into $tree (under a minute)"
    rm -rf "$tree.new"
    mkdir -p "$tree.new"
    tar -xJf "$tarball" -C "$tree.new" --strip-components=1
    for p in "${patches[@]}"; do
        log "applying patches/$(basename "$p")"
        patch -d "$tree.new" -p1 --batch --forward --no-backup-if-mismatch --silent <"$p" >&2 ||
            die "patch $p does not apply to $tarball"
    done
    echo "$source_id" >"$tree.new/.slicevisor-source"
    rm -rf "$tree"
    mv "$tree.new" "$tree"
fi

# --- 4. configuration: tinyconfig + fragment, once per (source, fragment) ---------------
config_id=$(
    {
        echo "$source_id"
        echo "recipe: tinyconfig + merge_config.sh -m + olddefconfig, v1"
        cat "$fragment"
    } | sha256sum | cut -d' ' -f1
)
if [[ ! -f $tree/.config || "$(cat "$tree/.slicevisor-config" 2>/dev/null || true)" != "$config_id" ]]; then
    log "configuring: make tinyconfig + $(basename "$fragment")"
    rm -f "$tree/.slicevisor-config"
    run "${kmake[@]}" tinyconfig
    run bash -c 'cd "$1" && scripts/kconfig/merge_config.sh -m .config "$2"' _ "$tree" "$fragment"
    run "${kmake[@]}" olddefconfig
    configured=1
else
    configured=0
fi

# Every option of the fragment must have survived olddefconfig (a dependency it lacks
# makes Kconfig drop it silently).
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]}
        if ! grep -qxF -- "$line" "$tree/.config"; then
            got=$(grep -E "^(# )?$opt[= ]" "$tree/.config" || true)
            bad+=("$opt: wanted '${line#*=}', .config has '${got:-nothing (option not visible)}'")
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
        opt=${BASH_REMATCH[1]}
        if grep -qE "^$opt=[ym]$" "$tree/.config"; then
            bad+=("$opt: wanted off, .config has '$(grep -E "^$opt=" "$tree/.config")'")
        fi
    fi
done <"$fragment"
if ((${#bad[@]})); then
    for b in "${bad[@]}"; do log "config option not as requested: $b"; done
    die "$(basename "$fragment") is not satisfied by $tree/.config (missing dependency?)"
fi
if ((configured)); then
    echo "$config_id" >"$tree/.slicevisor-config"
    log "configuration verified: every option of $(basename "$fragment") is in .config"
fi

# --- 5. kernel build ---------------------------------------------------------------------
if [[ -f $tree/vmlinux ]]; then
    log "make vmlinux (incremental)"
else
    log "building vmlinux with make -j$jobs (first build: ~6-10 min on 2 cores; log: $buildlog)"
fi
t0=$SECONDS
run "${kmake[@]}" -j"$jobs" vmlinux
if [[ ! -x $tree/usr/gen_init_cpio ]]; then
    run "${kmake[@]}" -j"$jobs" usr/
fi
[[ -x $tree/usr/gen_init_cpio ]] || die "$tree/usr/gen_init_cpio was not built"
log "kernel build step took $((SECONDS - t0)) s"

# --- 6. outputs ----------------------------------------------------------------------------
mkdir -p "$out_dir"
# Replace $2 by $1 only if the content differs (keeps mtimes stable for rebuild checks).
install_if_changed() {
    if [[ -f $2 ]] && cmp -s "$1" "$2"; then
        rm -f "$1"
        return 0
    fi
    mv -f "$1" "$2"
    log "updated $2"
}

cp "$tree/vmlinux" "$out_dir/.vmlinux.tmp"
install_if_changed "$out_dir/.vmlinux.tmp" "$out_dir/vmlinux"

busybox=/bin/busybox
[[ -x $busybox ]] || die "$busybox missing (package busybox-static)"
if readelf -lW "$busybox" | grep -qE '^ *INTERP '; then
    die "$busybox is dynamically linked; install busybox-static (it replaces busybox)"
fi
for f in "$busybox" "$init_script"; do
    [[ $f != *[[:space:]]* ]] || die "gen_init_cpio cannot take a path with whitespace: $f"
done
cpio_list=$out_dir/.initramfs.list
cat >"$cpio_list" <<EOF
# generated by guest-kernel/build.sh (usr/gen_init_cpio format)
dir /dev 755 0 0
nod /dev/console 600 0 0 c 5 1
nod /dev/null 666 0 0 c 1 3
dir /proc 755 0 0
dir /sys 755 0 0
dir /bin 755 0 0
dir /sbin 755 0 0
dir /usr 755 0 0
dir /usr/bin 755 0 0
dir /usr/sbin 755 0 0
dir /etc 755 0 0
dir /tmp 1777 0 0
dir /root 700 0 0
file /bin/busybox $busybox 755 0 0
file /init $init_script 755 0 0
EOF
# Fixed mtime for directories and device nodes so that an unchanged input gives an
# identical archive (regular files keep their own mtime).
"$tree/usr/gen_init_cpio" -t 0 "$cpio_list" >"$out_dir/.initramfs.cpio.tmp" ||
    die "gen_init_cpio failed on $cpio_list"
rm -f "$cpio_list"
install_if_changed "$out_dir/.initramfs.cpio.tmp" "$out_dir/initramfs.cpio"

log "done"
echo "$out_dir/vmlinux"
echo "$out_dir/initramfs.cpio"
