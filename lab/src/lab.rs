//! The lab: two network namespaces, edge and cloud, joined by an emulated
//! link. Backends: `tun` (a TUN device in each namespace and the userspace
//! relay) or `netem` (a veth pair with tc netem on each end, where the
//! kernel has sch_netem). Everything it creates is removed by `teardown`,
//! which also runs on drop.

use crate::model::Direction;
use crate::params::{Dir, LinkParams};
use crate::relay::{self, Clock, RelaySpec};
use crate::sys::{self, netns, tun};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The edge's and the cloud's addresses on the default link (subnet 0).
pub const EDGE_ADDR: &str = "198.18.0.1";
pub const CLOUD_ADDR: &str = "198.18.0.2";
pub const PREFIX_LEN: u8 = 30;
/// Interface name of the default link inside both namespaces.
pub const DEV: &str = "jlab0";

/// (edge address, cloud address, interface) of link number `subnet`:
/// 198.18.`subnet`.1 and .2 on `jlab<subnet>`, so several labs can share
/// one edge namespace, each with its own cloud behind its own link.
pub fn link_names(subnet: u8) -> (String, String, String) {
    (
        format!("198.18.{subnet}.1"),
        format!("198.18.{subnet}.2"),
        format!("jlab{subnet}"),
    )
}
const TXQUEUELEN: &str = "5000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Userspace relay between TUN devices.
    Tun,
    /// veth pair with tc netem (needs sch_netem).
    Netem,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Tun => "tun",
            Backend::Netem => "netem",
        }
    }
}

/// Whether the kernel has sch_netem: tries it on the loopback device of a
/// throwaway namespace. Needs root.
pub fn netem_available() -> bool {
    let ns = format!("jlab-probe-{}", std::process::id());
    if netns::create(&ns).is_err() {
        return false;
    }
    let ok = sys::run(
        "tc",
        &[
            "-n", &ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ],
    )
    .is_ok();
    let _ = netns::delete(&ns);
    ok
}

/// Picks the backend for `auto`, with the sentence saying why.
pub fn detect_backend() -> (Backend, &'static str) {
    if netem_available() {
        (
            Backend::Netem,
            "the kernel has sch_netem: using tc netem on a veth pair",
        )
    } else {
        (
            Backend::Tun,
            "the kernel has no sch_netem: using the userspace TUN emulator",
        )
    }
}

/// Removes namespaces and lock files of accuracy checks (`jchk<pid>-*`)
/// whose process is gone.
pub fn sweep_stale_check_namespaces() {
    netns::sweep_orphans("jchk", "netem-tun");
}

/// A running lab as its `ready` line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub backend: String,
    pub edge_ns: String,
    pub cloud_ns: String,
    pub edge_addr: String,
    pub cloud_addr: String,
}

impl Ready {
    /// What [`Lab::ready_line`] says, parsed (for programs that start
    /// `netem-tun run` and wait for the line).
    pub fn parse(line: &str) -> Result<Ready> {
        let rest = line
            .strip_prefix("ready ")
            .with_context(|| format!("not a ready line: {line:?}"))?;
        let fields: std::collections::HashMap<&str, &str> = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str| {
            fields
                .get(k)
                .map(|v| v.to_string())
                .with_context(|| format!("netem-tun ready line lacks {k}: {line:?}"))
        };
        Ok(Ready {
            backend: get("backend")?,
            edge_ns: get("edge_ns")?,
            cloud_ns: get("cloud_ns")?,
            edge_addr: get("edge_addr")?,
            cloud_addr: get("cloud_addr")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub prefix: String,
    pub backend: Backend,
    pub seed: u64,
    pub uplink: LinkParams,
    pub downlink: LinkParams,
    /// Which link this is (addresses and interface: [`link_names`]); 0 is
    /// the default.
    pub subnet: u8,
    /// Put the edge end into this existing namespace (another lab's edge)
    /// instead of creating `<prefix>-edge`; it is left in place at teardown.
    pub join_edge_ns: Option<String>,
}

impl LabConfig {
    /// A lab with one link (subnet 0) and namespaces of its own.
    pub fn new(
        prefix: String,
        backend: Backend,
        seed: u64,
        uplink: LinkParams,
        downlink: LinkParams,
    ) -> LabConfig {
        LabConfig {
            prefix,
            backend,
            seed,
            uplink,
            downlink,
            subnet: 0,
            join_edge_ns: None,
        }
    }
}

enum Link {
    None,
    Tun {
        models: [Arc<Mutex<Direction>>; 2],
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
        realtime: Arc<AtomicBool>,
    },
    Netem {
        params: [LinkParams; 2],
    },
}

pub struct Lab {
    pub edge_ns: String,
    pub cloud_ns: String,
    pub backend: Backend,
    pub edge_addr: String,
    pub cloud_addr: String,
    /// The link's interface in both namespaces.
    pub dev: String,
    /// The namespaces this lab created (and removes).
    owned: Vec<String>,
    seed: u64,
    link: Mutex<Link>,
    torn_down: Mutex<bool>,
    lock: Mutex<Option<netns::PrefixLock>>,
}

/// Each direction's own random stream, derived from the lab's seed.
fn dir_seed(seed: u64, d: Dir) -> u64 {
    match d {
        Dir::Uplink => seed,
        Dir::Downlink => seed ^ 0x9e37_79b9_7f4a_7c15,
    }
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::Uplink => 0,
        Dir::Downlink => 1,
    }
}

impl Lab {
    /// Builds the lab. Leftovers of a crashed run with the same prefix are
    /// removed first; on failure everything built so far is removed again.
    pub fn create(cfg: &LabConfig, fatal: Option<Sender<String>>) -> Result<Lab> {
        sys::require_root("netem-tun")?;
        netns::check_prefix(&cfg.prefix)?;
        cfg.uplink.validate().context("uplink")?;
        cfg.downlink.validate().context("downlink")?;
        let lock = netns::PrefixLock::acquire(&cfg.prefix)?;
        let (edge_addr, cloud_addr, dev) = link_names(cfg.subnet);
        let edge_ns = cfg
            .join_edge_ns
            .clone()
            .unwrap_or_else(|| format!("{}-edge", cfg.prefix));
        let cloud_ns = format!("{}-cloud", cfg.prefix);
        if cfg.join_edge_ns.is_some() && !netns::exists(&edge_ns) {
            bail!("the edge namespace {edge_ns} to join does not exist");
        }
        let owned: Vec<String> = match cfg.join_edge_ns {
            Some(_) => vec![cloud_ns.clone()],
            None => vec![edge_ns.clone(), cloud_ns.clone()],
        };
        let lab = Lab {
            edge_ns,
            cloud_ns,
            backend: cfg.backend,
            edge_addr,
            cloud_addr,
            dev,
            owned: owned.clone(),
            seed: cfg.seed,
            link: Mutex::new(Link::None),
            torn_down: Mutex::new(false),
            lock: Mutex::new(Some(lock)),
        };
        for ns in &owned {
            if netns::exists(ns) {
                eprintln!("netem-tun: removing namespace {ns} left by an earlier run");
                netns::delete(ns)?;
            }
        }
        for ns in &owned {
            netns::create(ns)?;
            sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Only the IPv4 test traffic should cross the link.
            if let Ok(mut c) = netns::command(ns, "sysctl") {
                let _ = c.args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]).status();
            }
        }
        let link = match cfg.backend {
            Backend::Tun => lab.build_tun(cfg, fatal)?,
            Backend::Netem => lab.build_netem(cfg)?,
        };
        *lab.link.lock().expect("link lock") = link;
        Ok(lab)
    }

    fn address(&self, ns: &str, addr: &str) -> Result<()> {
        let cidr = format!("{addr}/{PREFIX_LEN}");
        let dev = self.dev.as_str();
        sys::ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
        sys::ip(&["-n", ns, "link", "set", dev, "txqueuelen", TXQUEUELEN, "up"]).map(drop)
    }

    fn build_tun(&self, cfg: &LabConfig, fatal: Option<Sender<String>>) -> Result<Link> {
        let (dev_a, dev_b) = (self.dev.clone(), self.dev.clone());
        let edge = Arc::new(netns::run_in(&self.edge_ns, move || tun::open(&dev_a))?);
        let cloud = Arc::new(netns::run_in(&self.cloud_ns, move || tun::open(&dev_b))?);
        self.address(&self.edge_ns, &self.edge_addr)?;
        self.address(&self.cloud_ns, &self.cloud_addr)?;
        let models = [
            Arc::new(Mutex::new(Direction::new(
                cfg.uplink.clone(),
                dir_seed(cfg.seed, Dir::Uplink),
            ))),
            Arc::new(Mutex::new(Direction::new(
                cfg.downlink.clone(),
                dir_seed(cfg.seed, Dir::Downlink),
            ))),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let realtime = Arc::new(AtomicBool::new(false));
        let clock = Clock::start();
        let mut threads = Vec::new();
        for (dir, input, output) in [(Dir::Uplink, &edge, &cloud), (Dir::Downlink, &cloud, &edge)] {
            threads.push(relay::spawn(RelaySpec {
                name: dir.as_str().into(),
                input: input.clone(),
                output: output.clone(),
                model: models[idx(dir)].clone(),
                clock,
                stop: stop.clone(),
                realtime: realtime.clone(),
                fatal: fatal.clone(),
            })?);
        }
        Ok(Link::Tun {
            models,
            stop,
            threads,
            realtime,
        })
    }

    fn build_netem(&self, cfg: &LabConfig) -> Result<Link> {
        sys::ip(&[
            "-n",
            &self.edge_ns,
            "link",
            "add",
            &self.dev,
            "type",
            "veth",
            "peer",
            "name",
            &self.dev,
            "netns",
            &self.cloud_ns,
        ])?;
        self.address(&self.edge_ns, &self.edge_addr)?;
        self.address(&self.cloud_ns, &self.cloud_addr)?;
        for (ns, p) in [
            (&self.edge_ns, &cfg.uplink),
            (&self.cloud_ns, &cfg.downlink),
        ] {
            crate::netem::apply(ns, &self.dev, p)?;
        }
        Ok(Link::Netem {
            params: [cfg.uplink.clone(), cfg.downlink.clone()],
        })
    }

    /// Changes the conditions of one direction, for packets from now on.
    /// Restarts the link model's random streams (loss, jitter) from the
    /// lab's seed, so that runs which start their schedule here see the
    /// same draws in the same order; queued packets keep their due times.
    /// The tc backend has no seed to restart (netem draws from the kernel).
    pub fn restart_randomness(&self) {
        if let Link::Tun { models, .. } = &*self.link.lock().expect("link lock") {
            for d in Dir::BOTH {
                models[idx(d)]
                    .lock()
                    .expect("model lock")
                    .reseed(dir_seed(self.seed, d));
            }
        }
    }

    pub fn set(&self, dir: Dir, params: LinkParams) -> Result<()> {
        params.validate()?;
        let mut link = self.link.lock().expect("link lock");
        match &mut *link {
            Link::Tun { models, .. } => {
                models[idx(dir)]
                    .lock()
                    .expect("model lock")
                    .set_params(params);
            }
            Link::Netem { params: current } => {
                let ns = match dir {
                    Dir::Uplink => &self.edge_ns,
                    Dir::Downlink => &self.cloud_ns,
                };
                crate::netem::apply(ns, &self.dev, &params)?;
                current[idx(dir)] = params;
            }
            Link::None => bail!("the lab is torn down"),
        }
        Ok(())
    }

    pub fn params(&self, dir: Dir) -> LinkParams {
        match &*self.link.lock().expect("link lock") {
            Link::Tun { models, .. } => models[idx(dir)]
                .lock()
                .expect("model lock")
                .params()
                .clone(),
            Link::Netem { params } => params[idx(dir)].clone(),
            Link::None => LinkParams::default(),
        }
    }

    /// Packet counters per direction (tun), or tc's statistics (netem).
    pub fn stats(&self) -> serde_json::Value {
        match &*self.link.lock().expect("link lock") {
            Link::Tun { models, .. } => {
                let s = |d: Dir| models[idx(d)].lock().expect("model lock").stats().clone();
                serde_json::json!({"uplink": s(Dir::Uplink), "downlink": s(Dir::Downlink)})
            }
            Link::Netem { .. } => serde_json::json!({
                "uplink": crate::netem::stats(&self.edge_ns, &self.dev),
                "downlink": crate::netem::stats(&self.cloud_ns, &self.dev),
            }),
            Link::None => serde_json::Value::Null,
        }
    }

    /// Whether the relay threads run under SCHED_FIFO (tun backend).
    pub fn realtime(&self) -> bool {
        match &*self.link.lock().expect("link lock") {
            Link::Tun { realtime, .. } => realtime.load(Ordering::Relaxed),
            _ => false,
        }
    }

    /// The machine-readable line printed once the link is up.
    pub fn ready_line(&self) -> String {
        format!(
            "ready backend={} edge_ns={} cloud_ns={} edge_addr={} cloud_addr={} \
             prefix_len={PREFIX_LEN} dev={}",
            self.backend.as_str(),
            self.edge_ns,
            self.cloud_ns,
            self.edge_addr,
            self.cloud_addr,
            self.dev
        )
    }

    /// Stops the link, kills processes left in the namespaces and deletes
    /// them. Safe to call more than once and from any thread.
    pub fn teardown(&self) {
        let mut done = self.torn_down.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        *done = true;
        let link = std::mem::replace(
            &mut *self.link.lock().unwrap_or_else(|e| e.into_inner()),
            Link::None,
        );
        if let Link::Tun { stop, threads, .. } = link {
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
            // The TUN files close with the last Arc (held by the threads).
        }
        // A joined edge namespace belongs to the lab that made it; the
        // link's interface there goes with this lab's TUN file or veth peer.
        for ns in &self.owned {
            if let Err(e) = netns::delete(ns) {
                eprintln!("netem-tun: removing {ns}: {e:#}");
            }
        }
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_parse() {
        let l = "ready backend=tun edge_ns=tb1-edge cloud_ns=tb1-cloud edge_addr=198.18.0.1 \
                 cloud_addr=198.18.0.2 prefix_len=30 dev=jlab0";
        let r = Ready::parse(l).unwrap();
        assert_eq!(
            (r.edge_ns.as_str(), r.cloud_ns.as_str()),
            ("tb1-edge", "tb1-cloud")
        );
        assert_eq!(
            (r.backend.as_str(), r.cloud_addr.as_str()),
            ("tun", "198.18.0.2")
        );
        assert!(Ready::parse("ready backend=tun").is_err());
        assert!(Ready::parse("serving grpc=1").is_err());
    }
}
