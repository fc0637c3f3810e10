//! The tc netem side of the lab (used where the kernel has sch_netem):
//! applies a direction's conditions to the egress of an interface inside a
//! namespace. Jitter hold and the token bucket's burst have no netem
//! counterpart and are ignored there (see `tc.rs`).

use crate::params::LinkParams;
use crate::sys;
use crate::tc::netem_args;
use anyhow::Result;

pub fn apply(ns: &str, dev: &str, p: &LinkParams) -> Result<()> {
    let args = netem_args(p);
    let mut argv = vec!["-n", ns, "qdisc", "replace", "dev", dev, "root", "netem"];
    argv.extend(args.split_whitespace());
    sys::run("tc", &argv).map(drop)
}

/// tc's JSON statistics of the interface's qdiscs, or the error text.
pub fn stats(ns: &str, dev: &str) -> serde_json::Value {
    match sys::run("tc", &["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]) {
        Ok(out) => serde_json::from_str(&out).unwrap_or(serde_json::Value::String(out)),
        Err(e) => serde_json::Value::String(format!("{e:#}")),
    }
}
