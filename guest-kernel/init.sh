#!/bin/busybox sh
# /init of the slicevisor test guest (packed into initramfs.cpio by build.sh).
#
# The shebang names busybox directly: /bin/sh only exists after `busybox --install`.
# Kernel parameters it understands (unknown name=value parameters reach init's
# environment; /proc/cmdline is the fallback):
#   ip=ADDR/PREFIX                                  static address on eth0
#   ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>   kernel syntax
#   sliver_cmd="..."   run with `sh -c`, then print SLIVER-CMD-EXIT <status>
#   sliver_shell=1     interactive shell on the console
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

echo "SLIVER-READY $(uname -r)"

# cmdline_param NAME: value of NAME=... from /proc/cmdline, quoting as the kernel does
# it (double quotes group words; the quotes around a value are dropped).
cmdline_param() {
    awk -v want="$1" '
    {
        n = split($0, c, "")
        inq = 0; tok = ""; ntok = 0
        for (i = 1; i <= n + 1; i++) {
            ch = (i <= n) ? c[i] : " "
            if (ch == "\"") inq = !inq
            if (!inq && (ch == " " || ch == "\t" || ch == "\n")) {
                if (tok != "") toks[++ntok] = tok
                tok = ""
            } else tok = tok ch
        }
        for (i = 1; i <= ntok; i++) {
            eq = index(toks[i], "=")
            if (eq == 0 || substr(toks[i], 1, eq - 1) != want) continue
            v = substr(toks[i], eq + 1)
            gsub(/"/, "", v)
            val = v; found = 1        # the last occurrence wins, as in the kernel
        }
    }
    END { if (found) print val; exit !found }' /proc/cmdline 2>/dev/null
}

# param NAME: environment first (the kernel already split and unquoted it).
param() {
    eval "_v=\${$1-}"
    if [ -n "$_v" ]; then
        printf '%s\n' "$_v"
    else
        cmdline_param "$1"
    fi
}

# netmask_to_prefix 255.255.255.0 -> 24 (a plain number is taken as a prefix)
netmask_to_prefix() {
    case "$1" in
    *.*.*.*) ;;
    *[!0-9]* | "") return 1 ;;
    *) [ "$1" -le 32 ] && echo "$1"; return ;;
    esac
    _bits=0
    _rest=0 # once an octet is not 255, the following ones must be 0
    _old_ifs=$IFS; IFS=.
    set -f; set -- $1; set +f
    IFS=$_old_ifs
    [ $# -eq 4 ] || return 1
    for _o in "$@"; do
        case "$_rest:$_o" in
        0:255) _bits=$((_bits + 8)); continue ;;
        0:254) _bits=$((_bits + 7)) ;; 0:252) _bits=$((_bits + 6)) ;;
        0:248) _bits=$((_bits + 5)) ;; 0:240) _bits=$((_bits + 4)) ;;
        0:224) _bits=$((_bits + 3)) ;; 0:192) _bits=$((_bits + 2)) ;;
        0:128) _bits=$((_bits + 1)) ;; ?:0) ;;
        *) return 1 ;;
        esac
        _rest=1
    done
    echo "$_bits"
}

# Class-based default prefix, as the kernel uses for ip= without a netmask.
default_prefix() {
    _o1=${1%%.*}
    if [ "$_o1" -lt 128 ] 2>/dev/null; then echo 8
    elif [ "$_o1" -lt 192 ] 2>/dev/null; then echo 16
    else echo 24; fi
}

configure_ip() {
    _spec=$1
    _gw=""; _host=""; _dev=""; _auto=""
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
        if [ -z "$_client" ]; then
            say "ip=$_spec: no client address (autoconfiguration '$_auto' is not supported)"
            return 1
        fi
        case "$_client" in
        */*) _addr=$_client ;;
        *)
            if [ -n "$_mask" ]; then
                _prefix=$(netmask_to_prefix "$_mask") || {
                    say "ip=$_spec: bad netmask '$_mask'"
                    return 1
                }
            else
                _prefix=$(default_prefix "$_client")
            fi
            _addr=$_client/$_prefix ;;
        esac ;;
    */*) _addr=$_spec ;;
    *) _addr=$_spec/$(default_prefix "$_spec") ;;
    esac
    _dev=${_dev:-eth0}

    ip link set lo up || say "cannot bring up lo"
    # Built-in drivers probe before init runs, but give a late device a moment.
    _i=0
    while [ ! -e "/sys/class/net/$_dev" ] && [ $_i -lt 50 ]; do
        sleep 0.1
        _i=$((_i + 1))
    done
    if [ ! -e "/sys/class/net/$_dev" ]; then
        say "ip=$_spec: no network device $_dev (is a virtio-net device on the command line?)"
        return 1
    fi
    [ -n "$_host" ] && hostname "$_host"
    ip addr add "$_addr" dev "$_dev" || { say "cannot set $_addr on $_dev"; return 1; }
    ip link set "$_dev" up || { say "cannot bring up $_dev"; return 1; }
    if [ -n "$_gw" ]; then
        ip route add default via "$_gw" dev "$_dev" || say "cannot add default route via $_gw"
        say "$_dev is up: $_addr, default route via $_gw"
    else
        say "$_dev is up: $_addr"
    fi
}

ip_param=$(param ip) || true
if [ -n "$ip_param" ]; then
    configure_ip "$ip_param" || say "network configuration failed"
fi

cmd=$(param sliver_cmd) || true
if [ -n "$cmd" ]; then
    sh -c "$cmd"
    status=$?
    echo "SLIVER-CMD-EXIT $status"
fi

shell=$(param sliver_shell) || true
if [ "$shell" = 1 ]; then
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
