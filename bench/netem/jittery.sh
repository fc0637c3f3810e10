#!/bin/sh
# Generated from bench/scenarios/jittery.toml by `netem-tun tc-script --scenario bench/scenarios/jittery.toml`; do not edit.
# (bench/tests/scenarios.rs fails when this script and the scenario disagree.)
#
# jittery: Jittery WAN: RTT 40 ms +- 25 ms (20 ms +- 17.7 ms pareto each way), 100 Mbit/s; arrivals 20/s, 40/s from 30 s with a 100/s burst at 33-36 s
#
# Applies the scenario with tc netem on a gateway interface DEV:
#   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its
#   ingress, redirected through the IFB device (default ifb-jlab).
# Usage: jittery.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)
# Differences to netem-tun: no jitter hold; order is kept through `rate`;
# `limit` counts packets, so the byte buffer is approximate.
set -eu
. "$(dirname "$0")/lib.sh"

DURATION_S=120
STEP_TIMES="0"

# step INDEX: apply the conditions of schedule step INDEX.
step() {
    case "$1" in
    0)  # t=0s start
        netem_set uplink "delay 20ms 17.7ms distribution pareto rate 100000kbit limit 924"
        netem_set downlink "delay 20ms 17.7ms distribution pareto rate 100000kbit limit 924"
        ;;
    esac
}

netem_main "$@"
