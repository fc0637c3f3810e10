//! The scenario benchmark (`scenario-bench`, `cargo xtask bench`): the real
//! edge agent (under a CPU quota) and cloud service on the two sides of the
//! jitter lab, one seeded workload per scenario, every policy, one table.
//!
//! Pure and unit-tested: [`workload`] (the seeded task stream), [`record`]
//! (what the driver writes per task), [`stats`] (summaries, the oracle),
//! [`quick_window`] (the quick run's slice of a scenario), [`report`]
//! (markdown), [`ab`] (two arms' alternating runs compared, the host's
//! speed taken out). The I/O shell: [`plot`] and [`run`] (the orchestration),
//! with child processes and cgroups from [`crate::support`]. The workload
//! driver is the `scenario-driver` binary: it speaks the task API through
//! `agent-net` and links no model runtime.

pub mod ab;
pub mod plot;
pub mod quick_window;
pub mod record;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;
