#!/bin/sh
# Generated from bench/scenarios/bandwidth-collapse.toml by `netem-tun tc-script --scenario bench/scenarios/bandwidth-collapse.toml`; do not edit.
# (bench/tests/scenarios.rs fails when this script and the scenario disagree.)
#
# bandwidth-collapse: WAN (RTT 40 ms +- 2 ms) at 100 Mbit/s collapsing to 2 Mbit/s at 60 s; arrivals 20/s with a 100/s burst at 58-62 s
#
# Applies the scenario with tc netem on a gateway interface DEV:
#   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its
#   ingress, redirected through the IFB device (default ifb-jlab).
# Usage: bandwidth-collapse.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)
# Differences to netem-tun: no jitter hold; order is kept through `rate`;
# `limit` counts packets, so the byte buffer is approximate.
set -eu
. "$(dirname "$0")/lib.sh"

DURATION_S=120
STEP_TIMES="0 60"

# step INDEX: apply the conditions of schedule step INDEX.
step() {
    case "$1" in
    0)  # t=0s start
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 298"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 298"
        ;;
    1)  # t=60s collapse to 2 Mbit/s
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 2000kbit limit 100"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 2000kbit limit 100"
        ;;
    esac
}

netem_main "$@"
