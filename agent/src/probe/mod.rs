//! Network probes: every source turns what it sees into [`sample::ProbeEvent`]s.

pub mod active;
pub mod ebpf;
pub mod passive;
pub mod sample;
