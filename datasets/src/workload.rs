//! Payloads of the three task types, taken from the held-out sets, each
//! with the truth its answer is judged by: what the demo and the benchmark
//! driver send.

use crate::heldout::{self, TruthBox};
use anyhow::Result;

/// What a correct answer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    /// The class a classifier should answer.
    Class(u8),
    /// The objects a detector should find.
    Boxes(Vec<TruthBox>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub payload: Vec<u8>,
    pub truth: Truth,
}

/// The held-out sets, ready to be sent.
#[derive(Debug, Clone)]
pub struct Workload {
    images: Vec<heldout::LabelledImage>,
    scenes: Vec<heldout::Scene>,
    reviews: Vec<heldout::Review>,
}

impl Workload {
    /// Reads the three held-out sets found beside the models.
    pub fn load() -> Result<Workload> {
        Ok(Workload {
            images: heldout::images()?,
            scenes: heldout::scenes()?,
            reviews: heldout::reviews()?,
        })
    }

    /// Image `i` (cycling): a 96x96 JPEG and its class.
    pub fn image(&self, i: usize) -> Item {
        let s = &self.images[i % self.images.len()];
        Item {
            payload: s.jpeg.clone(),
            truth: Truth::Class(s.label),
        }
    }

    /// Scene `i` (cycling): a 256x256 JPEG and its boxes.
    pub fn scene(&self, i: usize) -> Item {
        let s = &self.scenes[i % self.scenes.len()];
        Item {
            payload: s.jpeg.clone(),
            truth: Truth::Boxes(s.boxes.clone()),
        }
    }

    /// Review `i` (cycling): UTF-8 text and its sentiment (0 rotten, 1 fresh).
    pub fn text(&self, i: usize) -> Item {
        let r = &self.reviews[i % self.reviews.len()];
        Item {
            payload: r.text.clone().into_bytes(),
            truth: Truth::Class(r.label),
        }
    }

    /// Item `i` of the set for a task type named as the agent names it
    /// (`image_classification`, `object_detection`, `nlp_analysis`).
    pub fn item(&self, task_type: &str, i: usize) -> Option<Item> {
        match task_type {
            "image_classification" => Some(self.image(i)),
            "object_detection" => Some(self.scene(i)),
            "nlp_analysis" => Some(self.text(i)),
            _ => None,
        }
    }
}
