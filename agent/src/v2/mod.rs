//! The KServe V2 inference protocol (`inference.GRPCInferenceService`,
//! what Triton, MLServer and KServe speak), both ways:
//!
//! - [`V2Server`]: the cloud serves its models over V2 beside
//!   `EdgeAIService` (`cloud.listen_v2`), as raw tensors through the same
//!   engines and admission as the cloud's own requests;
//! - [`V2Offloader`]: the edge offloads to any V2 server, preparing the
//!   payload itself and reading the raw output the way its own engines do.
//!
//! The contract, per model (the cloud `ModelSpec`'s name and version,
//! platform `pytorch_libtorch`): one input tensor `input`, one output
//! tensor `output`, the TorchScript forward's raw semantics. Images are
//! `UINT8 [-1, H, W, 3]`, text `INT64 [-1, max_tokens]`, raw grayscale
//! `FP32 [-1, 1, H, W]` scaled to 0..1; logits come back as `FP32 [-1, C]`,
//! boxes as `FP32 [-1, K, 6]` (`x1, y1, x2, y2, score, class` in the
//! model's input pixels).

mod client;
mod server;
mod tensor;

pub use client::{V2Model, V2Offloader, V2Target};
pub use server::{V2Backend, V2Server, PLATFORM, SERVER_NAME};
pub use tensor::{input_from_request, output_from_response, INPUT_NAME, OUTPUT_NAME};
