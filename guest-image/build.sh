#!/usr/bin/env bash
# guest-image/build.sh: build the reference sliver image (vref "debian-12").
#
#   <repo>/target/guest/debian-12.ext4   ext4 image, 1 GiB (sparse), label sliver-root
#
# Debian 12 `minbase` (debootstrap) plus dropbear-bin, with slicevisor-init
# (guest-init/, built here) as /sbin/init. Why minbase and not a smaller userland: boot time
# on these hosts is the kernel's plus one fork per process init starts, not the size of the
# userland, since slicevisor-init starts only dropbear at boot (and a getty on the first
# console key); and a researcher who lives in the sliver gets apt, dpkg and a Debian shell.
# Why dropbear: OpenSSH's sshd re-executes itself for every connection, each exec costing
# about a second here; dropbear forks once.
#
# The debootstrap tree is cached in ${SLICEVISOR_CACHE:-/var/cache/slicevisor}/images,
# keyed by this script's package list and suite; the image is assembled from it (mke2fs -d,
# no mount) with the current init binary on every run, in seconds.
#
# Progress goes to stderr; stdout gets only the output path.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
cache_root=${SLICEVISOR_CACHE:-/var/cache/slicevisor}/images
suite=bookworm
packages=dropbear-bin
size=1G
out_dir=$repo/target/guest
out=$out_dir/debian-12.ext4

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (debootstrap)"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

# The mirror the host's apt uses (falls back to deb.debian.org).
mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE 'https?://[^ ]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

key=$(printf '%s\n' "suite $suite" "variant minbase" "include $packages" "recipe v1" |
    sha256sum | cut -c1-16)
tree=$cache_root/debian-12-$key
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ ! -f $tree/.complete ]]; then
    log "debootstrap --variant=minbase --include=$packages $suite from $mirror (a few minutes)"
    rm -rf "$tree.new"
    debootstrap --variant=minbase --include="$packages" "$suite" "$tree.new" "$mirror" \
        >"$cache_root/debootstrap.log" 2>&1 ||
        { tail -n 30 "$cache_root/debootstrap.log" >&2; die "debootstrap failed (log: $cache_root/debootstrap.log)"; }
    # No package cache or lists in the image.
    rm -rf "$tree.new"/var/cache/apt/archives/*.deb "$tree.new"/var/lib/apt/lists/*
    touch "$tree.new/.complete"
    rm -rf "$tree"
    mv "$tree.new" "$tree"
fi

log "building slicevisor-init"
(cd "$repo" && cargo build --release -p guest-init --bin slicevisor-init >&2)
init_bin=$repo/target/release/slicevisor-init

# Assemble in a scratch copy of the tree (hard links: cheap), with the files that differ;
# a file to change is replaced, never written through (that would change the cached tree).
stage=$(mktemp -d "$cache_root/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -al "$tree" "$stage/root"
root=$stage/root
rm -f "$root/.complete" "$root/sbin/init"
install -m 0755 "$init_bin" "$root/sbin/slicevisor-init"
ln -s slicevisor-init "$root/sbin/init"
# root logs in with the slice's keys only: no password (dropbear runs with -s).
awk -F: 'BEGIN { OFS = ":" } $1 == "root" { $2 = "*" } { print }' "$root/etc/shadow" >"$root/etc/shadow.tmp"
mv "$root/etc/shadow.tmp" "$root/etc/shadow"
chmod 0640 "$root/etc/shadow"
rm -f "$root/etc/fstab" "$root/etc/machine-id"
printf '%s\n' "/dev/vda / ext4 defaults 0 1" >"$root/etc/fstab"
: >"$root/etc/machine-id"
mkdir -p "$root/etc/dropbear"
printf 'debian-12 (slicevisor reference image)\n' >"$root/etc/slicevisor-vref"

mkdir -p "$out_dir"
log "mke2fs -t ext4 -d (image $size)"
rm -f "$out.tmp"
: >"$out.tmp" # an existing file: mke2fs -q then says nothing ("Creating regular file")
mke2fs -q -F -t ext4 -L sliver-root -d "$root" "$out.tmp" "$size" >&2
mv -f "$out.tmp" "$out"
log "done: $out ($(du -h --apparent-size "$out" | cut -f1) apparent, $(du -h "$out" | cut -f1) on disk)"
echo "$out"
