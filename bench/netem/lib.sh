# Shared by the generated scenario scripts in bench/netem/ (POSIX sh).
# Applies jitter-lab scenarios with tc netem on a real gateway interface:
#   uplink   (edge -> cloud): netem on the egress (root) of DEV
#   downlink (cloud -> edge): DEV's ingress redirected (u32 + mirred)
#                             to an IFB device, netem on the IFB's egress
# Commands of every scenario script (SCRIPT is e.g. bench/netem/wan.sh):
#   SCRIPT setup DEV [IFB]      create the IFB device and the ingress redirect
#   SCRIPT apply DEV [IFB]      set the conditions at AT_S seconds (env, default 0)
#   SCRIPT run DEV [IFB]        setup, then follow the schedule to duration_s,
#                               then teardown (also on Ctrl-C / SIGTERM)
#   SCRIPT teardown DEV [IFB]   remove the qdiscs, the filter and the IFB device
#   SCRIPT check                exit 0 if this kernel has sch_netem
# DRY_RUN=1 prints the commands (and sleeps) instead of running them.
# IFB defaults to ifb-jlab.

netem_run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "$*"
    else
        "$@"
    fi
}

netem_sleep() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "sleep $1"
    else
        sleep "$1"
    fi
}

# netem_set uplink|downlink "NETEM OPTIONS"
netem_set() {
    case "$1" in
        uplink) _dev=$DEV ;;
        downlink) _dev=$IFB ;;
        *) echo "netem_set: uplink or downlink, not $1" >&2; return 1 ;;
    esac
    # The options are several words on purpose.
    # shellcheck disable=SC2086
    netem_run tc qdisc replace dev "$_dev" root netem $2
}

netem_available() {
    _ns="netem-probe-$$"
    ip netns add "$_ns" || return 1
    if tc -n "$_ns" qdisc add dev lo root netem delay 1ms 2>/dev/null; then
        _ok=0
    else
        _ok=1
    fi
    ip netns del "$_ns"
    return $_ok
}

netem_setup() {
    # Idempotent: a second setup starts from a clean ingress.
    if ! ip link show "$IFB" >/dev/null 2>&1 || [ "${DRY_RUN:-0}" = 1 ]; then
        netem_run ip link add "$IFB" type ifb
    fi
    netem_run ip link set "$IFB" up
    netem_run tc qdisc del dev "$DEV" ingress 2>/dev/null || true
    netem_run tc qdisc add dev "$DEV" handle ffff: ingress
    # u32 "match everything" (older and more widely built than matchall).
    netem_run tc filter add dev "$DEV" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "$IFB"
}

netem_teardown() {
    netem_run tc qdisc del dev "$DEV" root 2>/dev/null || true
    netem_run tc qdisc del dev "$DEV" ingress 2>/dev/null || true
    netem_run ip link del "$IFB" 2>/dev/null || true
}

# Index of the last schedule step at or before $1 seconds.
netem_step_at() {
    echo "$STEP_TIMES" | awk -v t="$1" '{ n = 0; for (i = 1; i <= NF; i++) if ($i <= t + 0) n = i - 1; print n }'
}

netem_follow_schedule() {
    _prev=0
    _i=0
    for _t in $STEP_TIMES; do
        netem_sleep "$(awk -v a="$_t" -v b="$_prev" 'BEGIN { print a - b }')"
        step "$_i"
        _prev=$_t
        _i=$((_i + 1))
    done
    netem_sleep "$(awk -v a="$DURATION_S" -v b="$_prev" 'BEGIN { d = a - b; print (d > 0 ? d : 0) }')"
}

netem_usage() {
    echo "usage: $0 setup|apply|run|teardown DEV [IFB]   (AT_S=T for apply; DRY_RUN=1 to print)" >&2
    echo "       $0 check" >&2
    exit 2
}

netem_main() {
    [ $# -ge 1 ] || netem_usage
    _cmd=$1
    if [ "$_cmd" = check ]; then
        if netem_available; then
            echo "tc netem available"
            return 0
        fi
        echo "no sch_netem in this kernel: use the userspace emulator (netem-tun run)" >&2
        return 1
    fi
    [ $# -ge 2 ] || netem_usage
    DEV=$2
    IFB=${3:-ifb-jlab}
    if [ "${DRY_RUN:-0}" != 1 ] && [ "$(id -u)" != 0 ]; then
        echo "$0: must run as root (tc and ip change $DEV)" >&2
        exit 1
    fi
    case "$_cmd" in
        setup) netem_setup ;;
        apply) step "$(netem_step_at "${AT_S:-0}")" ;;
        run)
            trap 'netem_teardown' EXIT
            trap 'exit 130' INT TERM
            netem_setup
            netem_follow_schedule
            ;;
        teardown) netem_teardown ;;
        *) netem_usage ;;
    esac
}
