#!/bin/sh
# Generated from bench/scenarios/lan.toml by `netem-tun tc-script --scenario bench/scenarios/lan.toml`; do not edit.
# (bench/tests/scenarios.rs fails when this script and the scenario disagree.)
#
# lan: LAN: RTT 1 ms +- 0.2 ms (0.5 ms +- 0.14 ms normal each way), no loss, no rate limit; arrivals 20/s with a 60/s burst at 20-24 s
#
# Applies the scenario with tc netem on a gateway interface DEV:
#   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its
#   ingress, redirected through the IFB device (default ifb-jlab).
# Usage: lan.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)
# Differences to netem-tun: no jitter hold; order is kept through `rate`;
# `limit` counts packets, so the byte buffer is approximate.
set -eu
. "$(dirname "$0")/lib.sh"

DURATION_S=60
STEP_TIMES="0"

# step INDEX: apply the conditions of schedule step INDEX.
step() {
    case "$1" in
    0)  # t=0s start
        netem_set uplink "delay 0.5ms 0.14ms distribution normal rate 100gbit limit 100000"
        netem_set downlink "delay 0.5ms 0.14ms distribution normal rate 100gbit limit 100000"
        ;;
    esac
}

netem_main "$@"
