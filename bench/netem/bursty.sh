#!/bin/sh
# Generated from bench/scenarios/bursty.toml by `netem-tun tc-script --scenario bench/scenarios/bursty.toml`; do not edit.
# (bench/tests/scenarios.rs fails when this script and the scenario disagree.)
#
# bursty: Calm WAN (RTT 40 ms +- 2 ms) alternating with 10 s jitter storms (RTT 60 ms +- 40 ms, pareto); arrivals 20/s with a 100/s burst at 22-25 s
#
# Applies the scenario with tc netem on a gateway interface DEV:
#   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its
#   ingress, redirected through the IFB device (default ifb-jlab).
# Usage: bursty.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)
# Differences to netem-tun: no jitter hold; order is kept through `rate`;
# `limit` counts packets, so the byte buffer is approximate.
set -eu
. "$(dirname "$0")/lib.sh"

DURATION_S=120
STEP_TIMES="0 20 30 50 60 80 90"

# step INDEX: apply the conditions of schedule step INDEX.
step() {
    case "$1" in
    0)  # t=0s start
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    1)  # t=20s storm 1
        netem_set uplink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        netem_set downlink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        ;;
    2)  # t=30s calm
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    3)  # t=50s storm 2
        netem_set uplink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        netem_set downlink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        ;;
    4)  # t=60s calm
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    5)  # t=80s storm 3
        netem_set uplink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        netem_set downlink "delay 30ms 28.3ms distribution pareto rate 100000kbit limit 1361"
        ;;
    6)  # t=90s calm
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    esac
}

netem_main "$@"
