#!/bin/sh
# Generated from bench/scenarios/outage.toml by `netem-tun tc-script --scenario bench/scenarios/outage.toml`; do not edit.
# (bench/tests/scenarios.rs fails when this script and the scenario disagree.)
#
# outage: WAN (RTT 40 ms +- 2 ms) with the link down from 60 s to 65 s; arrivals 20/s with a 100/s backlog burst at 65-68 s
#
# Applies the scenario with tc netem on a gateway interface DEV:
#   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its
#   ingress, redirected through the IFB device (default ifb-jlab).
# Usage: outage.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)
# Differences to netem-tun: no jitter hold; order is kept through `rate`;
# `limit` counts packets, so the byte buffer is approximate.
set -eu
. "$(dirname "$0")/lib.sh"

DURATION_S=120
STEP_TIMES="0 60 65"

# step INDEX: apply the conditions of schedule step INDEX.
step() {
    case "$1" in
    0)  # t=0s start
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    1)  # t=60s link down
        netem_set uplink "delay 20ms 1.41ms distribution normal loss 100% rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal loss 100% rate 100000kbit limit 381"
        ;;
    2)  # t=65s link up
        netem_set uplink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        netem_set downlink "delay 20ms 1.41ms distribution normal rate 100000kbit limit 381"
        ;;
    esac
}

netem_main "$@"
