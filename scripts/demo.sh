#!/usr/bin/env bash
# Set up a fresh machine and boot one sliver: installs the packages the guest kernel needs,
# builds that kernel (about 6 minutes the first time, cached afterwards) and slicevisor, then
# boots the guest. It prints SLIVER-READY <kernel release>, runs a command, and powers off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "scripts/demo.sh: cargo not found (install Rust)" >&2; exit 1; }
bash guest-kernel/build.sh >/dev/null
cargo build --release -p slicevisor
exec target/release/slicevisor run \
    --kernel target/guest/vmlinux \
    --initrd target/guest/initramfs.cpio \
    --mem-mib 256 \
    --cmdline "sliver_cmd=\"uname -a; cat /proc/cpuinfo | grep -c ^processor\"" \
    "$@"
