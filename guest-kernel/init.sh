#!/bin/busybox sh
# /init of the slicevisor test guest (packed into initramfs.cpio by build.sh).
#
# The shebang names busybox directly: /bin/sh only exists after `busybox --install`.
# Kernel parameters it understands (unknown name=value parameters reach init's
# environment; /proc/cmdline is the fallback):
#   ip=ADDR/PREFIX                                  static address on eth0
#   ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>:<dns0>:<dns1>
#                                                   kernel syntax (nfsroot.rst); the
#                                                   resolvers go to /etc/resolv.conf
#   sliver_cmd="..."   run with `sh -c`, then print SLIVER-CMD-EXIT <status>
#   sliver_shell=1     interactive shell on the console
# A console line containing @@SLIVER-POWEROFF@@ (sent by the VMM on SIGUSR1) powers off.
# Then it syncs and reboots; with reboot=k the VMM sees the i8042 reset as power-off.
#
# Lines for the VMM/test harness: "SLIVER-READY <kernel release>" and
# "SLIVER-CMD-EXIT <status>". Everything else is prefixed "sliver-init:".

/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "sliver-init: $*"; }

mount -t proc proc /proc || say "cannot mount /proc"
mount -t sysfs sysfs /sys || say "cannot mount /sys"
# devtmpfs is not mounted automatically on an initramfs; fine if it already is.
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true

# No forks below unless needed: under the development hosts' emulated ring 0 every
# fork+exec costs seconds (see README.md), so helpers set variables instead of
# being called as $(...), and the release comes from /proc rather than uname.
rel=
read -r rel </proc/sys/kernel/osrelease 2>/dev/null || rel=$(uname -r)
echo "SLIVER-READY $rel"

cmdline=
read -r cmdline </proc/cmdline 2>/dev/null || true

# cmdline_param NAME: set $val to the value of NAME=... on /proc/cmdline, split as
# the kernel does (double quotes group words; one pair around the value is dropped).
# Pure shell, so no fork. Returns 1 if NAME is absent; the last occurrence wins.
cmdline_param() {
    _rest=$cmdline
    _found=1
    val=
    while [ -n "$_rest" ]; do
        _tok=
        _inq=0
        while [ -n "$_rest" ]; do
            _c=${_rest%"${_rest#?}"}
            _rest=${_rest#?}
            case "$_c" in
            '"') _inq=$((1 - _inq)) ;;
            ' ' | '	') [ $_inq = 0 ] && break ;;
            esac
            _tok=$_tok$_c
        done
        case "$_tok" in
        "$1="*)
            val=${_tok#*=}
            val=${val#\"}
            val=${val%\"}
            _found=0
            ;;
        esac
    done
    return $_found
}

# param NAME: set $val from init's environment (the kernel already split and
# unquoted it), else from /proc/cmdline. Returns 1 if NAME was not given.
param() {
    eval "val=\${$1-}"
    [ -n "$val" ] && return 0
    cmdline_param "$1"
}

# netmask_to_prefix 255.255.255.0: set $prefix to 24 (a plain number is taken as a
# prefix). Returns 1 for a malformed or non-contiguous mask.
netmask_to_prefix() {
    case "$1" in
    *.*.*.*) ;;
    *[!0-9]* | "") return 1 ;;
    *) [ "$1" -le 32 ] || return 1; prefix=$1; return 0 ;;
    esac
    prefix=0
    _rest=0 # once an octet is not 255, the following ones must be 0
    _old_ifs=$IFS; IFS=.
    set -f; set -- $1; set +f
    IFS=$_old_ifs
    [ $# -eq 4 ] || return 1
    for _o in "$@"; do
        case "$_rest:$_o" in
        0:255) prefix=$((prefix + 8)); continue ;;
        0:254) prefix=$((prefix + 7)) ;; 0:252) prefix=$((prefix + 6)) ;;
        0:248) prefix=$((prefix + 5)) ;; 0:240) prefix=$((prefix + 4)) ;;
        0:224) prefix=$((prefix + 3)) ;; 0:192) prefix=$((prefix + 2)) ;;
        0:128) prefix=$((prefix + 1)) ;; ?:0) ;;
        *) return 1 ;;
        esac
        _rest=1
    done
}

# default_prefix ADDR: set $prefix class-based, as the kernel does for ip= without
# a netmask.
default_prefix() {
    _o1=${1%%.*}
    case "$_o1" in *[!0-9]* | "") _o1=255 ;; esac
    if [ "$_o1" -lt 128 ]; then prefix=8
    elif [ "$_o1" -lt 192 ]; then prefix=16
    else prefix=24; fi
}

configure_ip() {
    _spec=$1
    _gw=""; _host=""; _dev=""; _auto=""; _dns0=""; _dns1=""
    case "$_spec" in
    off | none) say "ip=$_spec: network left unconfigured"; return 0 ;;
    dhcp | on | any | both | bootp | rarp | dhcp6 | auto6)
        say "ip=$_spec: autoconfiguration is not supported, use a static address"
        return 1 ;;
    *:*)
        _old_ifs=$IFS; IFS=:
        set -f; set -- $_spec; set +f
        IFS=$_old_ifs
        _client=${1-}; _gw=${3-}; _mask=${4-}; _host=${5-}; _dev=${6-}; _auto=${7-}
        _dns0=${8-}; _dns1=${9-}
        if [ -z "$_client" ]; then
            say "ip=$_spec: no client address (autoconfiguration '$_auto' is not supported)"
            return 1
        fi
        case "$_client" in
        */*) _addr=$_client ;;
        *)
            if [ -n "$_mask" ]; then
                netmask_to_prefix "$_mask" || {
                    say "ip=$_spec: bad netmask '$_mask'"
                    return 1
                }
            else
                default_prefix "$_client"
            fi
            _addr=$_client/$prefix ;;
        esac ;;
    */*) _addr=$_spec ;;
    *) default_prefix "$_spec"; _addr=$_spec/$prefix ;;
    esac
    _dev=${_dev:-eth0}

    ip link set lo up || say "cannot bring up lo"
    # Built-in drivers probe before init runs, but give a late device a moment.
    _i=0
    while [ ! -e "/sys/class/net/$_dev" ] && [ $_i -lt 5 ]; do
        sleep 1
        _i=$((_i + 1))
    done
    if [ ! -e "/sys/class/net/$_dev" ]; then
        say "ip=$_spec: no network device $_dev (is a virtio-net device on the command line?)"
        return 1
    fi
    [ -n "$_host" ] && hostname "$_host"
    ip addr add "$_addr" dev "$_dev" || { say "cannot set $_addr on $_dev"; return 1; }
    ip link set "$_dev" up || { say "cannot bring up $_dev"; return 1; }
    for _ns in $_dns0 $_dns1; do echo "nameserver $_ns"; done >/etc/resolv.conf
    if [ -n "$_gw" ]; then
        ip route add default via "$_gw" dev "$_dev" || say "cannot add default route via $_gw"
        say "$_dev is up: $_addr, default route via $_gw"
    else
        say "$_dev is up: $_addr"
    fi
}

if param ip; then
    configure_ip "$val" || say "network configuration failed"
fi

# The VMM asks for an orderly power-off by typing this line on the console (the node daemon
# has it do so on stop, before anything harsher). A background reader turns it into a reboot,
# which the VMM treats as power-off. Not with an interactive shell: that owns console input.
POWEROFF_REQUEST='@@SLIVER-POWEROFF@@'
if ! { param sliver_shell && [ "$val" = 1 ]; }; then
    (
        while read -r _line; do
            case "$_line" in
            *"$POWEROFF_REQUEST"*)
                say "power-off requested by the VMM"
                sync
                reboot -f
                ;;
            esac
        done </dev/console
    ) &
fi

if param sliver_cmd; then
    sh -c "$val"
    echo "SLIVER-CMD-EXIT $?"
fi

if param sliver_shell && [ "$val" = 1 ]; then
    say "starting a shell on the console; exit it to power off"
    # cttyhack opens the real tty behind /dev/console so that ^C and job control work.
    setsid cttyhack sh -l </dev/console >/dev/console 2>&1
fi

say "powering off"
sync
reboot -f
sleep 5
say "reboot failed; exiting init (the kernel panics, and reboots with panic=-1)"
exit 1
