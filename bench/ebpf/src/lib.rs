//! The passive eBPF probe measured against known conditions: the accuracy
//! check (`probe-check`, [`check`]) runs the real probe in the jitter lab
//! with real TCP and QUIC traffic and compares its samples with what the
//! traffic itself saw; the overhead benchmark (`ebpf-overhead`,
//! [`overhead`]) measures TCP throughput on a veth pair with and without
//! the programs attached. Both need root.
//!
//! Its own crate because it links the agent (and so libtorch), which the
//! emulator does not need.

pub mod cgroup;
pub mod check;
pub mod cleanup;
pub mod detach;
pub mod overhead;
pub mod quic;
pub mod tcp;
