#!/usr/bin/env bash
# A researcher's path through slicevisor on a fresh Debian 12 machine (root, /dev/kvm): install
# what is needed, build the guest kernel (about 6 minutes the first time, cached afterwards),
# the reference image (debootstrap, a minute or so, cached) and slicevisor; then start a node
# daemon, import the image, create a sliver with a freshly generated ssh key, log in over ssh,
# run a command there, and clean up. Everything network-side happens in a network namespace
# of its own (slicevisor-demo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "scripts/demo.sh: cargo not found (install Rust)" >&2; exit 1; }
say() { printf '\n== %s\n' "$*" >&2; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v resize2fs >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

say "guest kernel (about 6 minutes the first time, then cached in /var/cache/slicevisor)"
bash guest-kernel/build.sh >/dev/null
say "reference image (debootstrap, a minute or so the first time)"
bash guest-image/build.sh >/dev/null
say "slicevisor, release build (then the per-sliver VMM linked static)"
bash scripts/build-release.sh -p slicevisor
sv=$PWD/target/release/slicevisor

work=$(mktemp -d /var/tmp/slicevisor-demo.XXXXXX)
ns=slicevisor-demo
socket=$work/node.sock
cleanup() {
    "$sv" ctl --socket "$socket" delete demo >/dev/null 2>&1 || true
    "$sv" image --socket "$socket" delete debian-12 >/dev/null 2>&1 || true
    [[ -n ${daemon:-} ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up

say "node daemon (state and its log in $work, removed at the end)"
# nsenter --net, not `ip netns exec`: that one remounts /sys for the namespace, which hides
# /sys/fs/cgroup from the daemon, and the sliver would run without its CPU and memory limits.
nsenter --net=/run/netns/"$ns" -- "$sv" node --socket "$socket" --state-dir "$work/state" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do [[ -S $socket ]] && break; sleep 0.1; done

say "import the reference image"
"$sv" image --socket "$socket" import debian-12 target/guest/debian-12.ext4

say "a sliver with a fresh key (its root disk: the image, grown to the spec's disk_max)"
ssh-keygen -q -t ed25519 -N '' -C demo -f "$work/id_ed25519"
cat >"$work/spec.json" <<SPEC
{"slice": "demo_slice", "kernel": "$PWD/target/guest/vmlinux", "mem_mib": 256,
 "vref": "debian-12", "disk_max": 4000000, "keys": ["$(cat "$work/id_ed25519.pub")"],
 "net": {"ipv4": "10.99.0.2/30", "host_ipv4": "10.99.0.1"}}
SPEC
"$sv" ctl --socket "$socket" create demo --spec "$work/spec.json" >/dev/null
"$sv" ctl --socket "$socket" start demo >/dev/null
say "booting until its ssh server is up (about 40 s where KVM emulates the guest kernel, as on the CI hosts; seconds on hardware virtualisation; its console: slicevisor ctl console demo)"
for _ in $(seq 300); do
    "$sv" ctl --socket "$socket" console-log demo | grep -q '^SLIVER-SSHD' && break
    sleep 1
done
"$sv" ctl --socket "$socket" console-log demo | grep -E '^(SLIVER|slicevisor-init)'

say "ssh in and run a command"
"$sv" ctl --socket "$socket" ssh demo -i "$work/id_ed25519" -- \
    'echo "hello from $(hostname)"; uname -r; df -h / | tail -1; cat /etc/slicevisor-vref'

say "stop and clean up"
"$sv" ctl --socket "$socket" stop demo | grep -E '^(state|exit_reason)'
say "demo done: the sliver, its image, the daemon and the namespace are removed on exit; README.md, \"Running a sliver by hand\", goes on from here"
