#!/usr/bin/env bash
# The release build as slivers run it: `cargo build --release` of what is asked (the whole
# workspace's binaries by default, or the cargo arguments given), then the VMM binary
# (slicevisor-vmm) linked again static-pie.
#
# Static, a VMM keeps no shared library resident: ~2.3 MiB RSS beyond guest memory at the
# guest's first instruction against ~3.2 MiB dynamically linked, at the same CPU within noise
# (docs/benchmarks.md, vmm_start). Cargo has no per-binary rustflags: `cargo rustc` passes the
# flag to that binary's own crate and link alone (its dependencies stay the release build's).
# A later plain `cargo build --release` links the VMM dynamically again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if (($#)); then
    cargo build --release "$@"
else
    cargo build --release --workspace --bins
fi
cargo rustc --release -p slicevisor --bin slicevisor-vmm -- -C target-feature=+crt-static
