//! Network probes: the passive eBPF probe (loader, attachments, ring-buffer
//! reader, record conversion), the active TCP-connect probe, and the
//! capability handling the eBPF probe needs. Every probe produces
//! [`agent_core::ProbeEvent`]s.

mod active;
mod ebpf;
pub mod privileges;

pub use active::{connect_rtt, ActiveProbe};
pub use ebpf::{
    convert_ring_items, default_cgroup, filter_key, find_object, EbpfProbe, EbpfProbeConfig,
    EbpfStats, EbpfUnavailable, ObjectSource, ProbePart, TcAttach, DEFAULT_SAMPLE_INTERVAL,
    DEFAULT_STATE_DIR, OBJECT_ENV, OBJECT_RELATIVE,
};
