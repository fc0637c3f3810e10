//! The agent: the assembly of the parts into the edge agent and the cloud
//! service, local inference (libtorch), configuration, metrics, the demo
//! and the `agent` command line. The parts live in their own crates:
//! `agent-core` (decisions, estimators, queue), `agent-net` (wire, TLS,
//! offload layers, listeners), `agent-probe` (eBPF and active probes).
//! See ARCHITECTURE.md for the data flow.

pub mod admin;
mod audit;
pub mod cloud;
pub mod config;
mod cpu;
pub mod demo;
pub mod edge;
mod endpoints;
pub mod infer;
mod lobby;
mod manager;
mod metrics;
mod monitor;
mod passive;
pub mod split;
pub mod store;
pub mod submit;
pub mod update;
pub mod v2;

pub use manager::{Manager, StatsSnapshot};
