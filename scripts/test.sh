#!/usr/bin/env bash
# Every test slicevisor has: the guest kernel is built (or taken from its cache) first, because
# the end-to-end tests boot it. Needs root, /dev/kvm and /dev/net/tun; see README.md.
#
# scripts/test.sh --quick: the quick lane for a developer's machine, any user, no KVM: format,
# lints, and every test that needs neither root nor KVM nor a guest kernel (the crates' own
# tests, the device tests through the guest-driver harness, the workspace conventions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*" >&2; }

command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found (install Rust)" >&2; exit 1; }

# One closing line for a whole run (cargo's last line is a doc-test summary).
summarize() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
         END { printf "summary: %d passed, %d failed\n", p, f }' "$1"
}

if [[ "${1:-}" == "--quick" ]]; then
    step "format and lints"
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    step "tests that need neither root nor KVM"
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    status=0
    { cargo test --workspace --exclude e2e --no-fail-fast &&
        cargo test -p e2e --lib --test conventions --no-fail-fast; } 2>&1 | tee "$log" || status=$?
    summarize "$log"
    exit "$status"
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/test.sh [--quick]" >&2
    exit 2
fi

step "host tools the tests use"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v unshare >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
# The audit export tests read the exports back with the operators' tools.
command -v nfcapd >/dev/null && command -v nfdump >/dev/null || need+=(nfdump)
command -v tshark >/dev/null || need+=(tshark)
# ...and compare the codes written with the kernel's headers (pkt_cls.h's TC actions).
[[ -f /usr/include/linux/pkt_cls.h ]] || need+=(linux-libc-dev)
# The schema fuzzer speaks TCP; socat carries it to the daemon's unix socket.
command -v socat >/dev/null || need+=(socat)
# The node daemon's rules (nft, the JSON interface the nftables crate drives).
command -v nft >/dev/null || need+=(nftables)
# Slivers' disks: the reference image (debootstrap), ext4 resizing, the cloud-init config disk
# (FAT), an XFS file system for copy-on-write disks, and the ssh client the tests log in with.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v resize2fs >/dev/null && command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v python3 >/dev/null || need+=(python3)
# Which KVM ioctls a VMM makes (a saved CPUID table spares it KVM_GET_SUPPORTED_CPUID).
command -v strace >/dev/null || need+=(strace)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    # tshark's wireshark-common asks whether non-root users may capture; answer no up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

step "schema fuzzer (Schemathesis from PyPI, into target/schemathesis)"
if ! target/schemathesis/bin/st --version >/dev/null 2>&1; then
    python3 -m venv target/schemathesis
    target/schemathesis/bin/pip install --quiet --disable-pip-version-check schemathesis==4.32.5
fi

step "guest kernel (cached after the first build)"
bash guest-kernel/build.sh

step "reference image debian-12 (debootstrap cached after the first build)"
bash guest-image/build.sh

step "format and lints"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "build (and the fuzz targets, which must keep building)"
cargo build --workspace --bins
# The VMM linked static-pie, as scripts/build-release.sh makes it for slivers: every test
# that starts a VMM runs that one (`cargo test` does not relink it: the slicevisor package
# has no integration tests that would need its binaries rebuilt).
cargo rustc -p slicevisor --bin slicevisor-vmm -- -C target-feature=+crt-static
cargo build --manifest-path fuzz/Cargo.toml

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
summarize "$log"

step "the VMM the tests ran is still the static one, and starts a guest"
if out=$(cargo run -q -p benches --bin vmm_start -- 3); then
    echo "$out"
    grep -q '^slicevisor-vmm run: .*(static)$' <<<"$out" || { echo "the VMM was not linked static" >&2; status=1; }
else
    echo "$out"
    echo "vmm_start failed with the static VMM" >&2
    status=1
fi
exit "$status"
