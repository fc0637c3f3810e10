//! The jitter lab: emulates a bad network between an edge namespace and a
//! cloud namespace.
//!
//! Pure logic (link model, scenarios, control language, netem rendering)
//! is free of I/O and unit-tested; `sys`, `relay`, `lab`, `control`,
//! `traffic` and `accuracy` are the thin I/O shell around it. The
//! `netem-tun` binary is the command-line front end (see bench/README.md).

pub mod accuracy;
pub mod command;
pub mod control;
pub mod lab;
pub mod model;
pub mod netem;
pub mod params;
pub mod relay;
pub mod scenario;
pub mod sys;
pub mod tc;
pub mod traffic;

pub use params::{Dir, JitterDistribution, LinkParams, LinkPatch};
pub use scenario::{Profile, RatePhase, Scenario, TaskMix, Workload};
