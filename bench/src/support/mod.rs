//! What every benchmark needs around the code it measures: cleanup on
//! every exit path, child processes in namespaces, cgroups (the edge's CPU
//! quota, a cgroup v2 of its own for sock_ops).

pub mod cleanup;
pub mod cpu_quota;
pub mod probe_cgroup;
pub mod procs;
pub mod stamp;
