//! Generated protobuf and gRPC types for `edge_ai.proto`.

#![allow(clippy::all)]

pub mod edge_ai {
    tonic::include_proto!("edge_ai");
}

pub use edge_ai::*;
