//! Attachments that would outlive a crashed agent, and their cleanup.
//!
//! Almost everything the probe attaches is owned by a file descriptor: the
//! sock_ops cgroup link, tcx links (Linux 6.6+), tracepoint perf events,
//! maps and programs all go away when the process dies, however it dies,
//! and nothing is pinned. The exception is tc attached through netlink
//! (older kernels, or forced): a cls_bpf filter and the clsact qdisc under
//! it stay on the interface. Before making such an attachment the probe
//! writes a record of it to the state directory (one file per probe); a
//! clean exit removes both the attachment and the record. At every start,
//! records whose process is gone are replayed: the filters with our program
//! names are removed from that interface (in the namespace it was in, if
//! that still exists) and the clsact qdisc too when we had added it and
//! nothing else hangs off it.

use super::netlink::{self, Netns};
use agent_common::{PROG_TC_EGRESS, PROG_TC_INGRESS};
use aya::programs::tc::{self, TcAttachType};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// What one probe attached through netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcRecord {
    pub pid: i32,
    pub netns: (u64, u64),
    pub iface: String,
    /// Whether this probe created the interface's clsact qdisc.
    pub clsact_added: bool,
}

impl TcRecord {
    fn render(&self) -> String {
        format!(
            "pid={}\nnetns={}:{}\niface={}\nclsact_added={}\n",
            self.pid,
            self.netns.0,
            self.netns.1,
            self.iface,
            u8::from(self.clsact_added)
        )
    }

    fn parse(text: &str) -> Option<TcRecord> {
        let mut pid = None;
        let mut netns = None;
        let mut iface = None;
        let mut clsact_added = None;
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k {
                "pid" => pid = v.parse().ok(),
                "netns" => {
                    let (d, i) = v.split_once(':')?;
                    netns = Some((d.parse().ok()?, i.parse().ok()?));
                }
                "iface" => iface = Some(v.to_string()),
                "clsact_added" => clsact_added = Some(v == "1"),
                _ => {}
            }
        }
        Some(TcRecord {
            pid: pid?,
            netns: netns?,
            iface: iface?,
            clsact_added: clsact_added?,
        })
    }
}

/// A record on disk, removed when dropped after a clean detach.
#[derive(Debug)]
pub struct RecordFile {
    pub path: PathBuf,
    pub record: TcRecord,
}

impl RecordFile {
    /// Writes `record` to a new file under `dir`.
    pub fn create(dir: &Path, record: TcRecord) -> io::Result<RecordFile> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{}-{}.tc",
            record.pid,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, record.render())?;
        Ok(RecordFile { path, record })
    }

    pub fn update(&mut self, record: TcRecord) -> io::Result<()> {
        std::fs::write(&self.path, record.render())?;
        self.record = record;
        Ok(())
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn alive(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    }
}

/// Records under `dir`, as (path, record); unreadable files are skipped.
pub fn records(dir: &Path) -> Vec<(PathBuf, TcRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tc"))
        .filter_map(|p| {
            let rec = TcRecord::parse(&std::fs::read_to_string(&p).ok()?)?;
            Some((p, rec))
        })
        .collect()
}

/// True when a live probe (this process or another) has a record for
/// `iface` in namespace `netns`.
pub fn in_use(dir: &Path, netns: (u64, u64), iface: &str) -> bool {
    records(dir)
        .iter()
        .any(|(_, r)| r.netns == netns && r.iface == iface && alive(r.pid))
}

/// Undoes the records of dead processes; returns one line per record for the log.
pub fn clean(dir: &Path) -> Vec<String> {
    let mut report = Vec::new();
    for (path, rec) in records(dir) {
        if alive(rec.pid) {
            continue;
        }
        let line = match Netns::find(rec.netns) {
            None => format!(
                "pid {} left tc on {} in a network namespace that no longer exists",
                rec.pid, rec.iface
            ),
            Some(ns) if in_use(dir, rec.netns, &rec.iface) => {
                // A live probe shares the interface; remove nothing of its.
                drop(ns);
                format!(
                    "pid {} left tc on {}, now used by a running probe",
                    rec.pid, rec.iface
                )
            }
            Some(ns) => match ns.run(|| undo(&rec)) {
                Ok(Ok(what)) => format!("removed {what} left on {} by pid {}", rec.iface, rec.pid),
                Ok(Err(e)) | Err(e) => format!(
                    "could not remove tc left on {} by pid {}: {e}",
                    rec.iface, rec.pid
                ),
            },
        };
        report.push(line);
        let _ = std::fs::remove_file(&path);
    }
    report
}

fn undo(rec: &TcRecord) -> io::Result<String> {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(rec.iface.as_str()) else {
        return Ok("nothing (the interface is gone)".into());
    };
    let mut removed = Vec::new();
    for (attach, name) in [
        (TcAttachType::Ingress, PROG_TC_INGRESS),
        (TcAttachType::Egress, PROG_TC_EGRESS),
    ] {
        match tc::qdisc_detach_program(&rec.iface, attach, name) {
            Ok(()) => removed.push(name),
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    let mut what = if removed.is_empty() {
        "no filters".to_string()
    } else {
        format!("filters {}", removed.join(", "))
    };
    if rec.clsact_added && netlink::clsact_filter_count(ifindex)? == 0 {
        match netlink::delete_clsact(ifindex) {
            Ok(()) => what.push_str(" and the clsact qdisc"),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_dead_ones_without_namespace_are_dropped() {
        let dir = std::env::temp_dir().join(format!("edge-agent-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = TcRecord {
            pid: std::process::id() as i32,
            netns: (1, 2),
            iface: "eth9".into(),
            clsact_added: true,
        };
        assert_eq!(TcRecord::parse(&rec.render()), Some(rec.clone()));
        let mine = RecordFile::create(&dir, rec.clone()).unwrap();
        // A record of a process that cannot exist (pid above pid_max) in a
        // namespace that does not exist: dropped with a note.
        let dead = TcRecord {
            pid: i32::MAX,
            ..rec.clone()
        };
        RecordFile::create(&dir, dead).unwrap();
        assert!(in_use(&dir, (1, 2), "eth9"));
        let report = clean(&dir);
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(report[0].contains("no longer exists"), "{report:?}");
        // Our own (live) record stays until removed.
        assert_eq!(records(&dir).len(), 1);
        mine.remove();
        assert!(records(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
