//! A model as configured: its file, name, version and the input it expects.
//! Checking a payload needs no model loaded, so the manager and the cloud
//! do it before accepting work.

use agent_core::TaskError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One model and the input it expects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// Input image height and width: the payload is `height * width` bytes
    /// of 8-bit grayscale.
    #[serde(default = "default_side")]
    pub height: usize,
    #[serde(default = "default_side")]
    pub width: usize,
    /// Execution time assumed until measured, in milliseconds.
    #[serde(default = "default_expected_ms")]
    pub expected_ms: f64,
}

fn default_version() -> String {
    "1".into()
}
fn default_side() -> usize {
    8
}
fn default_expected_ms() -> f64 {
    1.0
}

impl ModelSpec {
    /// Checks that a payload is an image of the model's input size.
    pub fn validate_payload(&self, payload: &[u8]) -> Result<(), TaskError> {
        let want = self.height * self.width;
        if payload.len() != want {
            return Err(TaskError::InvalidInput(format!(
                "{} expects a {}x{} grayscale image ({want} bytes), got {} bytes",
                self.name,
                self.height,
                self.width,
                payload.len()
            )));
        }
        Ok(())
    }
}
