//! The benchmarks, one crate with a binary each: the scenario benchmark
//! (`scenario-bench` + its workload driver `scenario-driver`,
//! [`scenarios`]), the eBPF probe's accuracy check and overhead
//! (`probe-check`, `ebpf-overhead`, [`ebpf`]), the transport benchmark
//! (`bench-transport`), the agent's throughput and per-task overhead
//! (`bench-throughput`, [`throughput`]) and the fault and load suite
//! (`faults`, [`faults`]), several offload endpoints behind different
//! links (`bench-endpoints`, [`endpoints`]),
//! over the jitter lab (`jitter-lab`). [`support`]
//! holds what they share. Nothing here runs a model: the agents under test
//! run as their own processes, and libtorch is not linked.

pub mod ebpf;
pub mod endpoints;
pub mod faults;
pub mod scenarios;
pub mod support;
pub mod throughput;
pub mod transport;
