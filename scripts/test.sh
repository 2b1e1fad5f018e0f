#!/usr/bin/env bash
# Every test slicevisor has: the guest kernel is built (or taken from its cache) first, because
# the end-to-end tests boot it. Needs root, /dev/kvm and /dev/net/tun; see README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*" >&2; }

command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found (install Rust)" >&2; exit 1; }

step "host tools the tests use"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v unshare >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
# The audit export tests read the exports back with the operators' tools.
command -v nfcapd >/dev/null && command -v nfdump >/dev/null || need+=(nfdump)
command -v tshark >/dev/null || need+=(tshark)
if ((${#need[@]})); then
    # tshark's wireshark-common asks whether non-root users may capture; answer no up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

step "guest kernel (cached after the first build)"
bash guest-kernel/build.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "build (and the fuzz targets, which must keep building)"
cargo build --workspace --bins
cargo build --manifest-path fuzz/Cargo.toml

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo's last line is a doc-test summary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
