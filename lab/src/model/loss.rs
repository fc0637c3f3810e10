//! Packet loss: independent (Bernoulli) or bursty (Gilbert-Elliott).

use crate::params::LinkParams;
use rand::Rng;

#[derive(Debug, Clone, PartialEq)]
pub enum LossModel {
    None,
    Random(f64),
    /// Two-state Markov chain advanced once per packet; each state loses
    /// packets with its own probability.
    GilbertElliott {
        p: f64,
        r: f64,
        loss_good: f64,
        loss_bad: f64,
        bad: bool,
    },
}

impl LossModel {
    pub fn new(params: &LinkParams) -> Self {
        if params.gilbert_elliott() {
            LossModel::GilbertElliott {
                p: params.ge_p,
                r: params.ge_r,
                loss_good: params.ge_loss_good,
                loss_bad: params.ge_loss_bad,
                bad: false,
            }
        } else if params.loss > 0.0 {
            LossModel::Random(params.loss)
        } else {
            LossModel::None
        }
    }

    /// New parameters; a Gilbert-Elliott chain keeps its current state.
    pub fn update(&mut self, params: &LinkParams) {
        let was_bad = matches!(self, LossModel::GilbertElliott { bad: true, .. });
        *self = LossModel::new(params);
        if let LossModel::GilbertElliott { bad, .. } = self {
            *bad = was_bad;
        }
    }

    /// Whether the next packet is lost.
    pub fn lose<R: Rng>(&mut self, rng: &mut R) -> bool {
        match self {
            LossModel::None => false,
            LossModel::Random(p) => rng.random_bool(*p),
            LossModel::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
                bad,
            } => {
                let flip = if *bad { *r } else { *p };
                if rng.random_bool(flip) {
                    *bad = !*bad;
                }
                rng.random_bool(if *bad { *loss_bad } else { *loss_good })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::rng;

    fn run(params: &LinkParams, n: usize) -> Vec<bool> {
        let mut m = LossModel::new(params);
        let mut r = rng(11);
        (0..n).map(|_| m.lose(&mut r)).collect()
    }

    fn rate(v: &[bool]) -> f64 {
        v.iter().filter(|&&x| x).count() as f64 / v.len() as f64
    }

    /// Mean length of runs of consecutive losses.
    fn mean_burst(v: &[bool]) -> f64 {
        let (mut bursts, mut lost, mut prev) = (0usize, 0usize, false);
        for &x in v {
            if x {
                lost += 1;
                if !prev {
                    bursts += 1;
                }
            }
            prev = x;
        }
        lost as f64 / bursts.max(1) as f64
    }

    #[test]
    fn random_loss_rate() {
        let p = LinkParams {
            loss: 0.01,
            ..Default::default()
        };
        let v = run(&p, 100_000);
        assert!((rate(&v) - 0.01).abs() < 0.001, "{}", rate(&v));
    }

    #[test]
    fn gilbert_elliott_loss_rate_and_burstiness() {
        let p = LinkParams {
            ge_p: 0.02,
            ge_r: 0.3,
            ge_loss_good: 0.0,
            ge_loss_bad: 0.8,
            ..Default::default()
        };
        let v = run(&p, 200_000);
        let got = rate(&v);
        assert!((got - p.expected_loss()).abs() < 0.005, "loss {got}");
        // Independent loss at 5 % would give bursts of ~1.05 packets.
        let burst = mean_burst(&v);
        assert!(burst > 2.0, "mean burst {burst}");
    }

    #[test]
    fn no_loss_model_never_loses() {
        assert_eq!(rate(&run(&LinkParams::default(), 10_000)), 0.0);
    }

    #[test]
    fn update_keeps_bad_state() {
        let p = LinkParams {
            ge_p: 1.0,
            ge_r: 0.000_001,
            ..Default::default()
        };
        let mut m = LossModel::new(&p);
        let mut r = rng(2);
        assert!(m.lose(&mut r));
        m.update(&LinkParams {
            ge_loss_bad: 0.5,
            ..p
        });
        assert!(matches!(m, LossModel::GilbertElliott { bad: true, .. }));
    }
}
