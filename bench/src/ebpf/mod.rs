//! The passive eBPF probe measured against known conditions: the accuracy
//! check (`probe-check`, [`probe_accuracy`]) runs the real probe in the
//! jitter lab with real TCP and QUIC traffic ([`tcp_flow`], [`quic_flow`])
//! and compares its samples with what the traffic itself saw; the overhead
//! benchmark (`ebpf-overhead`, [`overhead`]) measures TCP throughput on a
//! veth pair with and without the programs attached; [`detach`] checks that
//! nothing stays in the kernel. All need root.

pub mod detach;
pub mod overhead;
pub mod probe_accuracy;
pub mod quic_flow;
pub mod tcp_flow;
