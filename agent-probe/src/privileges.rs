//! Privileges for the passive eBPF probe: what loading and attaching needs,
//! checked up front, and dropping everything else once attached.
//!
//! Needed to load and attach (in the effective set; raised from the
//! permitted set when only there):
//! - `CAP_BPF`: create maps, load programs (`CAP_SYS_ADMIN` on kernels
//!   older than 5.8, which have no `CAP_BPF`);
//! - `CAP_NET_ADMIN`: load sock_ops / sched_cls programs, attach to a
//!   cgroup and to an interface (tcx link or netlink filter, clsact qdisc);
//! - `CAP_PERFMON`: attach tracepoints and read kernel memory in them
//!   (`CAP_SYS_ADMIN` before 5.8);
//! - `CAP_SYS_ADMIN`, only where used: mounting tracefs when it is not
//!   mounted, entering another network namespace to clean up leftovers.
//!
//! What the running agent keeps afterwards ([`after_attach`]):
//! - nothing when the tc programs sit on tcx links (Linux 6.6+): every
//!   attachment is a link file descriptor the process owns, closing it
//!   detaches, reading the ring buffer and updating the filter map go
//!   through descriptors the process already holds;
//! - `CAP_NET_ADMIN` when the tc programs are netlink filters (older kernels
//!   or forced): removing them and the clsact qdisc at exit is a netlink
//!   request that needs it.
//!
//! Linux keeps capability sets per thread: [`drop_all_except`] changes the
//! calling thread and the threads it creates later, not threads that exist
//! already. Load the probe and drop privileges before starting the async
//! runtime; [`threads_with_capabilities`] tells whether that worked.

use caps::{CapSet, Capability, CapsHashSet};
use std::fmt;

/// One capability the probe needs and the reason, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.cap, self.why)
    }
}

/// Why the probe cannot get the privileges it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub euid: u32,
    pub missing: Vec<Need>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.euid != 0 {
            write!(f, "not running as root (euid {}) and ", self.euid)?;
        }
        write!(f, "missing ")?;
        for (i, need) in self.missing.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{need}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Missing {}

/// True when the kernel knows `CAP_BPF` and `CAP_PERFMON` (Linux 5.8+).
pub fn kernel_has_cap_bpf() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .is_some_and(|last| last >= Capability::CAP_BPF.index())
}

/// What loading and attaching the probe needs on this kernel.
pub fn ebpf_needs() -> Vec<Need> {
    if kernel_has_cap_bpf() {
        vec![
            Need {
                cap: Capability::CAP_BPF,
                why: "create maps and load programs",
            },
            Need {
                cap: Capability::CAP_NET_ADMIN,
                why: "load and attach sock_ops and tc programs",
            },
            Need {
                cap: Capability::CAP_PERFMON,
                why: "attach tracepoints",
            },
        ]
    } else {
        vec![
            Need {
                cap: Capability::CAP_SYS_ADMIN,
                why: "load BPF programs and attach tracepoints (kernel without CAP_BPF)",
            },
            Need {
                cap: Capability::CAP_NET_ADMIN,
                why: "load and attach sock_ops and tc programs",
            },
        ]
    }
}

/// Makes sure the calling thread holds `needs` in its effective set, raising
/// them from the permitted set where needed.
pub fn ensure(needs: &[Need]) -> Result<(), Missing> {
    let mut missing = Vec::new();
    for need in needs {
        let held = caps::has_cap(None, CapSet::Effective, need.cap).unwrap_or(false)
            || (caps::has_cap(None, CapSet::Permitted, need.cap).unwrap_or(false)
                && caps::raise(None, CapSet::Effective, need.cap).is_ok());
        if !held {
            missing.push(*need);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing {
            euid: nix::unistd::geteuid().as_raw(),
            missing,
        })
    }
}

/// True when the calling thread may use `cap` (effective set).
pub fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// The capabilities the running agent keeps once the probe is attached.
pub fn after_attach(tc_netlink: bool) -> Vec<Capability> {
    if tc_netlink {
        vec![Capability::CAP_NET_ADMIN]
    } else {
        Vec::new()
    }
}

/// Drops every capability but `keep` from the calling thread: bounding,
/// inheritable and ambient sets emptied (bounding only while `CAP_SETPCAP`
/// allows), effective and permitted reduced to `keep`. Returns what was
/// dropped from the permitted set.
pub fn drop_all_except(keep: &[Capability]) -> Result<Vec<Capability>, caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let before = caps::read(None, CapSet::Permitted)?;
    // The bounding set needs CAP_SETPCAP, which goes with the rest below.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let kept: CapsHashSet = before.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    let mut dropped: Vec<Capability> = before.difference(&kept).copied().collect();
    dropped.sort_by_key(|c| c.index());
    Ok(dropped)
}

/// Thread ids of this process whose effective set is not empty (reads
/// `/proc/self/task/*/status`): after [`drop_all_except`] on the main thread
/// before any other thread started, the list holds at most the threads that
/// keep what [`after_attach`] names.
pub fn threads_with_capabilities() -> Vec<(i32, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if eff != 0 {
            out.push((tid, eff));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_message_names_user_and_capabilities() {
        let m = Missing {
            euid: 1000,
            missing: vec![
                Need {
                    cap: Capability::CAP_BPF,
                    why: "create maps and load programs",
                },
                Need {
                    cap: Capability::CAP_NET_ADMIN,
                    why: "attach",
                },
            ],
        };
        assert_eq!(
            m.to_string(),
            "not running as root (euid 1000) and missing CAP_BPF (create maps and load programs), \
             CAP_NET_ADMIN (attach)"
        );
    }

    #[test]
    fn after_attach_keeps_net_admin_only_for_netlink_filters() {
        assert!(after_attach(false).is_empty());
        assert_eq!(after_attach(true), vec![Capability::CAP_NET_ADMIN]);
    }

    #[test]
    fn needs_match_the_kernel() {
        let needs = ebpf_needs();
        assert!(needs.iter().any(|n| n.cap == Capability::CAP_NET_ADMIN));
        if kernel_has_cap_bpf() {
            assert!(needs.iter().any(|n| n.cap == Capability::CAP_BPF));
        }
    }

    #[test]
    fn dropping_on_a_thread_leaves_only_what_is_kept() {
        // Capability sets are per thread: do it on a scratch thread so the
        // test process keeps its own.
        std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).unwrap();
            let keep = [Capability::CAP_NET_ADMIN];
            let dropped = drop_all_except(&keep).unwrap();
            let eff = caps::read(None, CapSet::Effective).unwrap();
            let perm = caps::read(None, CapSet::Permitted).unwrap();
            let expect: CapsHashSet = before.intersection(&keep.into()).copied().collect();
            assert_eq!(eff, expect);
            assert_eq!(perm, expect);
            assert!(caps::read(None, CapSet::Inheritable).unwrap().is_empty());
            assert_eq!(dropped.len(), before.len() - expect.len());
            // A dropped capability cannot come back.
            if before.contains(&Capability::CAP_BPF) {
                assert!(caps::raise(None, CapSet::Effective, Capability::CAP_BPF).is_err());
                assert!(ensure(&ebpf_needs()).is_err());
            }
        })
        .join()
        .unwrap();
    }
}
