//! The edge AI offloading agent: probes -> estimators -> decision -> local
//! inference or offload -> result. See ARCHITECTURE.md for the data flow.

pub mod probe;
