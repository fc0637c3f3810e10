//! The edge AI offloading agent: probes -> estimators -> decision -> local
//! inference or offload -> result. See ARCHITECTURE.md for the data flow.

pub mod config;
pub mod dataset;
pub mod decide;
pub mod demo;
pub mod edge;
pub mod estimate;
pub mod infer;
pub mod manager;
pub mod metrics;
pub mod monitor;
pub mod offload;
pub mod privileges;
pub mod probe;
pub mod queue;
pub mod server;
pub mod submit;
pub mod task;
pub mod tls;
pub mod wire;
