//! Link conditions of one direction: the resolved parameters the emulator
//! applies, and the partial form (`LinkPatch`) used by scenario files,
//! scheduled changes and the control command.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Shape of the per-packet jitter around `delay_ms`.
///
/// `jitter_ms` means: uniform: half-width (delay +- jitter, like netem's
/// default); normal: standard deviation (netem `distribution normal`);
/// pareto: standard deviation of a zero-mean, upward-skewed Pareto (shape 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JitterDistribution {
    Uniform,
    #[default]
    Normal,
    Pareto,
}

impl fmt::Display for JitterDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JitterDistribution::Uniform => "uniform",
            JitterDistribution::Normal => "normal",
            JitterDistribution::Pareto => "pareto",
        })
    }
}

/// Which way a packet travels: uplink is edge -> cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Uplink,
    Downlink,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Uplink, Dir::Downlink];

    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Uplink => "uplink",
            Dir::Downlink => "downlink",
        }
    }
}

/// Fully resolved conditions of one direction. All fields have defaults that
/// mean "a perfect link": no delay, no loss, no rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// Link state; `false` drops every packet (an outage).
    pub up: bool,
    /// Fixed one-way delay.
    pub delay_ms: f64,
    /// Jitter magnitude, see [`JitterDistribution`].
    pub jitter_ms: f64,
    pub jitter_distribution: JitterDistribution,
    /// A drawn jitter value is kept for this long before the next draw, so
    /// back-to-back packets share one delay and stay in order (0: per packet).
    pub jitter_hold_ms: f64,
    /// `false`: a packet never overtakes an earlier one (its due time is at
    /// least the previous packet's). `true`: delays apply as drawn, as netem does.
    pub reorder: bool,
    /// Independent (Bernoulli) loss probability per packet.
    pub loss: f64,
    /// Gilbert-Elliott: probability of good -> bad per packet (0: model off).
    pub ge_p: f64,
    /// Gilbert-Elliott: probability of bad -> good per packet.
    pub ge_r: f64,
    /// Gilbert-Elliott: loss probability in the good state (netem's 1-k).
    pub ge_loss_good: f64,
    /// Gilbert-Elliott: loss probability in the bad state (netem's 1-h).
    pub ge_loss_bad: f64,
    /// Rate limit in Mbit/s (0: unlimited).
    pub rate_mbit: f64,
    /// Bytes that may wait for the rate limiter before tail drop
    /// (0: automatic, 100 ms at the rate but at least 10 full-size packets).
    pub buffer_bytes: u64,
    /// Token bucket depth: bytes that may pass at once at line speed.
    pub burst_bytes: u64,
}

pub const DEFAULT_BURST_BYTES: u64 = 3028;
pub const DEFAULT_JITTER_HOLD_MS: f64 = 10.0;
const MIN_AUTO_BUFFER: u64 = 15_140;

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            up: true,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            jitter_distribution: JitterDistribution::default(),
            jitter_hold_ms: DEFAULT_JITTER_HOLD_MS,
            reorder: false,
            loss: 0.0,
            ge_p: 0.0,
            ge_r: 1.0,
            ge_loss_good: 0.0,
            ge_loss_bad: 1.0,
            rate_mbit: 0.0,
            buffer_bytes: 0,
            burst_bytes: DEFAULT_BURST_BYTES,
        }
    }
}

impl LinkParams {
    /// Whether the Gilbert-Elliott loss model is active.
    pub fn gilbert_elliott(&self) -> bool {
        self.ge_p > 0.0
    }

    /// Long-run loss rate the parameters should produce (link up).
    pub fn expected_loss(&self) -> f64 {
        if self.gilbert_elliott() {
            let bad = self.ge_p / (self.ge_p + self.ge_r);
            (1.0 - bad) * self.ge_loss_good + bad * self.ge_loss_bad
        } else {
            self.loss
        }
    }

    /// The byte buffer in front of the rate limiter, resolving "automatic".
    pub fn effective_buffer_bytes(&self) -> u64 {
        if self.buffer_bytes > 0 {
            return self.buffer_bytes;
        }
        let per_100ms = (self.rate_mbit * 1e6 / 8.0 * 0.1) as u64;
        per_100ms.max(MIN_AUTO_BUFFER)
    }

    pub fn apply(&mut self, p: &LinkPatch) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = p.$f.clone() { self.$f = v; } )* };
        }
        set!(
            up,
            delay_ms,
            jitter_ms,
            jitter_distribution,
            jitter_hold_ms,
            reorder,
            loss,
            ge_p,
            ge_r,
            ge_loss_good,
            ge_loss_bad,
            rate_mbit,
            buffer_bytes,
            burst_bytes
        );
    }

    pub fn validate(&self) -> Result<(), ParamError> {
        let nonneg = [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("jitter_hold_ms", self.jitter_hold_ms),
            ("rate_mbit", self.rate_mbit),
        ];
        for (name, v) in nonneg {
            if !v.is_finite() || v < 0.0 {
                return Err(ParamError(format!("{name} must be >= 0, got {v}")));
            }
        }
        let probs = [
            ("loss", self.loss),
            ("ge_p", self.ge_p),
            ("ge_r", self.ge_r),
            ("ge_loss_good", self.ge_loss_good),
            ("ge_loss_bad", self.ge_loss_bad),
        ];
        for (name, v) in probs {
            if !(0.0..=1.0).contains(&v) {
                return Err(ParamError(format!("{name} must be in [0, 1], got {v}")));
            }
        }
        if self.gilbert_elliott() && self.ge_r <= 0.0 {
            return Err(ParamError("ge_r must be > 0 when ge_p > 0".into()));
        }
        if self.gilbert_elliott() && self.loss > 0.0 {
            return Err(ParamError(
                "loss and ge_p are exclusive (one loss model per direction, as in netem); set the other to 0"
                    .into(),
            ));
        }
        if self.burst_bytes < 1514 {
            return Err(ParamError(format!(
                "burst_bytes must be >= 1514 (one full packet), got {}",
                self.burst_bytes
            )));
        }
        if self.rate_mbit > 0.0 && self.rate_mbit < 0.01 {
            return Err(ParamError("rate_mbit below 0.01 is not supported".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid link parameters: {0}")]
pub struct ParamError(pub String);

/// A partial [`LinkParams`]: the fields that are set replace the current ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_distribution: Option<JitterDistribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_hold_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reorder: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge_r: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge_loss_good: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge_loss_bad: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

impl LinkPatch {
    pub fn is_empty(&self) -> bool {
        *self == LinkPatch::default()
    }

    /// Parses `key=value` words (the control command form), with the same
    /// keys as the scenario file. Values are TOML literals; a bare word that
    /// is not one (e.g. `normal`) is taken as a string.
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Self, ParamError> {
        let mut table = toml::Table::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| ParamError(format!("expected key=value, got {w:?}")))?;
            let value = parse_value(v.trim());
            table.insert(k.trim().to_string(), value);
        }
        LinkPatch::deserialize(toml::Value::Table(table)).map_err(|e| ParamError(e.to_string()))
    }
}

fn parse_value(v: &str) -> toml::Value {
    match format!("x = {v}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("x")
            .unwrap_or_else(|| toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_from_words_parses_numbers_bools_and_bare_words() {
        let p = LinkPatch::from_words([
            "delay_ms=40",
            "jitter_ms=2.5",
            "jitter_distribution=pareto",
            "up=false",
            "buffer_bytes=1000",
        ])
        .unwrap();
        assert_eq!(p.delay_ms, Some(40.0));
        assert_eq!(p.jitter_ms, Some(2.5));
        assert_eq!(p.jitter_distribution, Some(JitterDistribution::Pareto));
        assert_eq!(p.up, Some(false));
        assert_eq!(p.buffer_bytes, Some(1000));
        assert!(LinkPatch::from_words(["nonsense=1"]).is_err());
        assert!(LinkPatch::from_words(["delay_ms"]).is_err());
        assert!(LinkPatch::from_words(["jitter_distribution=cauchy"]).is_err());
    }

    #[test]
    fn apply_and_validate() {
        let mut p = LinkParams::default();
        p.apply(&LinkPatch {
            loss: Some(0.1),
            ..Default::default()
        });
        assert_eq!(p.loss, 0.1);
        assert!(p.validate().is_ok());
        p.ge_p = 0.01;
        assert!(p.validate().is_err(), "loss and GE together are refused");
        p.loss = 0.0;
        assert!(p.validate().is_ok());
        p.delay_ms = -1.0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn expected_loss_of_gilbert_elliott() {
        let p = LinkParams {
            ge_p: 0.02,
            ge_r: 0.3,
            ge_loss_bad: 0.8,
            ..Default::default()
        };
        assert!((p.expected_loss() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn automatic_buffer_is_100ms_at_rate() {
        let p = LinkParams {
            rate_mbit: 100.0,
            ..Default::default()
        };
        assert_eq!(p.effective_buffer_bytes(), 1_250_000);
        let slow = LinkParams {
            rate_mbit: 0.5,
            ..Default::default()
        };
        assert_eq!(slow.effective_buffer_bytes(), MIN_AUTO_BUFFER);
    }
}
