//! Rendering link conditions as `tc qdisc ... netem` arguments, and the
//! gateway scripts in `bench/netem/` generated from the scenario files.
//!
//! netem differs from the userspace emulator in three ways, noted in every
//! generated script: it has no jitter hold; it keeps packet order only when
//! a `rate` is set (it then computes each packet's send time from the last
//! queued one), so order keeping without a rate limit adds a `rate` far
//! above the link; and its queue `limit` counts packets (delayed ones
//! included), so `buffer_bytes` becomes an approximate packet count.

use crate::params::{Dir, JitterDistribution, LinkParams};
use crate::scenario::Scenario;
use std::fmt::Write;

/// Rate used only to make netem keep packet order.
const ORDER_KEEPING_RATE: &str = "100gbit";
const MTU: f64 = 1500.0;

/// Formats a number without a trailing `.0` and with at most 4 decimals.
pub fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn pct(p: f64) -> String {
    format!("{}%", num(p * 100.0))
}

/// netem queue limit (packets) for the conditions: the byte buffer plus
/// what is in flight at the largest likely delay.
pub fn netem_limit(p: &LinkParams) -> u64 {
    if p.rate_mbit <= 0.0 {
        return 100_000;
    }
    let pps = p.rate_mbit * 1e6 / 8.0 / MTU;
    let in_flight = pps * (p.delay_ms + 4.0 * p.jitter_ms) / 1e3;
    let buffered = p.effective_buffer_bytes() as f64 / MTU;
    (in_flight.ceil() + buffered.ceil()).max(100.0) as u64
}

/// The netem options (after `netem`) for one direction.
pub fn netem_args(p: &LinkParams) -> String {
    let mut a = Vec::<String>::new();
    if p.delay_ms > 0.0 || p.jitter_ms > 0.0 {
        a.push(format!("delay {}ms", num(p.delay_ms)));
        if p.jitter_ms > 0.0 {
            a.push(format!("{}ms", num(p.jitter_ms)));
            match p.jitter_distribution {
                JitterDistribution::Uniform => {}
                d => a.push(format!("distribution {d}")),
            }
        }
    }
    if !p.up {
        a.push("loss 100%".into());
    } else if p.gilbert_elliott() {
        a.push(format!(
            "loss gemodel {} {} {} {}",
            pct(p.ge_p),
            pct(p.ge_r),
            pct(p.ge_loss_bad),
            pct(p.ge_loss_good)
        ));
    } else if p.loss > 0.0 {
        a.push(format!("loss random {}", pct(p.loss)));
    }
    if p.rate_mbit > 0.0 {
        a.push(format!("rate {}kbit", num(p.rate_mbit * 1000.0)));
    } else if !p.reorder && p.jitter_ms > 0.0 {
        a.push(format!("rate {ORDER_KEEPING_RATE}"));
    }
    a.push(format!("limit {}", netem_limit(p)));
    a.join(" ")
}

fn sh_comment(text: &str) -> String {
    text.lines()
        .map(|l| format!("# {l}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The standalone gateway script of a scenario (see bench/netem/lib.sh for
/// the commands it offers). `source` is the scenario path shown in the header.
pub fn gateway_script(s: &Scenario, source: &str) -> String {
    let mut steps = vec![(0.0, String::from("start"))];
    for e in &s.schedule {
        steps.push((e.at_s, e.note.clone()));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#!/bin/sh\n# Generated from {source} by `netem-tun tc-script --scenario {source}`; do not edit.\n\
         # (bench/tests/scenarios.rs fails when this script and the scenario disagree.)\n#"
    );
    let _ = writeln!(
        out,
        "{}",
        sh_comment(&format!("{}: {}", s.name, s.description))
    );
    let _ = writeln!(
        out,
        "#\n# Applies the scenario with tc netem on a gateway interface DEV:\n\
         #   uplink (edge -> cloud) on the egress of DEV, downlink (cloud -> edge) on its\n\
         #   ingress, redirected through the IFB device (default ifb-jlab).\n\
         # Usage: {name}.sh setup|apply|run|teardown DEV [IFB]  (AT_S=T for apply; DRY_RUN=1 prints only)\n\
         # Differences to netem-tun: no jitter hold; order is kept through `rate`;\n\
         # `limit` counts packets, so the byte buffer is approximate.\nset -eu\n\
         . \"$(dirname \"$0\")/lib.sh\"\n",
        name = s.name
    );
    let _ = writeln!(out, "DURATION_S={}", num(s.duration_s));
    let times: Vec<String> = steps.iter().map(|(t, _)| num(*t)).collect();
    let _ = writeln!(out, "STEP_TIMES=\"{}\"\n", times.join(" "));
    let _ = writeln!(
        out,
        "# step INDEX: apply the conditions of schedule step INDEX."
    );
    let _ = writeln!(out, "step() {{\n    case \"$1\" in");
    for (i, (t, note)) in steps.iter().enumerate() {
        let label = if note.is_empty() {
            String::new()
        } else {
            format!(" {note}")
        };
        let _ = writeln!(out, "    {i})  # t={}s{label}", num(*t));
        for dir in Dir::BOTH {
            let p = s.params_at(dir, *t);
            let _ = writeln!(
                out,
                "        netem_set {} \"{}\"",
                dir.as_str(),
                netem_args(&p)
            );
        }
        let _ = writeln!(out, "        ;;");
    }
    let _ = writeln!(out, "    esac\n}}\n\nnetem_main \"$@\"");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_compactly() {
        assert_eq!(num(20.0), "20");
        assert_eq!(num(1.41), "1.41");
        assert_eq!(num(0.00001), "0");
        assert_eq!(pct(0.05), "5%");
    }

    #[test]
    fn normal_jitter_with_order_keeping() {
        let p = LinkParams {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            loss: 0.01,
            ..Default::default()
        };
        assert_eq!(
            netem_args(&p),
            "delay 20ms 5ms distribution normal loss random 1% rate 100gbit limit 100000"
        );
    }

    #[test]
    fn gilbert_elliott_rate_and_outage() {
        let p = LinkParams {
            delay_ms: 10.0,
            ge_p: 0.02,
            ge_r: 0.3,
            ge_loss_bad: 0.8,
            rate_mbit: 2.0,
            buffer_bytes: 150_000,
            ..Default::default()
        };
        // 2 Mbit/s = 166.7 pkt/s: 2 in flight over 10 ms, 100 buffered.
        assert_eq!(
            netem_args(&p),
            "delay 10ms loss gemodel 2% 30% 80% 0% rate 2000kbit limit 102"
        );
        let down = LinkParams {
            up: false,
            ..Default::default()
        };
        assert_eq!(netem_args(&down), "loss 100% limit 100000");
    }

    #[test]
    fn reorder_allowed_uniform_jitter() {
        let p = LinkParams {
            delay_ms: 1.0,
            jitter_ms: 0.2,
            jitter_distribution: JitterDistribution::Uniform,
            reorder: true,
            ..Default::default()
        };
        assert_eq!(netem_args(&p), "delay 1ms 0.2ms limit 100000");
    }
}
