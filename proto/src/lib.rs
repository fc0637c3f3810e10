//! Generated protobuf and gRPC types for `edge_ai.proto` and the KServe V2
//! inference protocol (`v2/grpc_predict_v2.proto`, module [`inference`]).

#![allow(clippy::all)]

pub mod edge_ai {
    tonic::include_proto!("edge_ai");
}

pub use edge_ai::*;

/// The KServe V2 inference protocol (`inference.GRPCInferenceService`).
pub mod inference {
    tonic::include_proto!("inference");
}
