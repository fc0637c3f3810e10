//! The scenario benchmark (`scenario-bench`, `cargo xtask bench`): the real
//! edge agent (under a CPU quota) and cloud service on the two sides of the
//! jitter lab, one seeded workload per scenario, every policy, one table.
//!
//! Pure and unit-tested: [`workload`] (the seeded task stream), [`record`]
//! (what the driver writes per task), [`stats`] (summaries, the oracle),
//! [`window`] (the quick run's slice of a scenario), [`report`] (markdown),
//! and the parsing in [`cgroup`]. The I/O shell: [`procs`] (child processes
//! and cleanup), [`cgroup`], [`plot`] and [`run`] (the orchestration). The
//! workload driver is a package of its own (`bench/driver`, binary
//! `scenario-driver`): it links the agent, and with it libtorch, which the
//! emulator and the orchestrator should not.

pub mod cgroup;
pub mod plot;
pub mod procs;
pub mod record;
pub mod report;
pub mod run;
pub mod stats;
pub mod window;
pub mod workload;
