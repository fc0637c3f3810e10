//! The fault and load suite (`cargo xtask faults`): the real cloud service
//! and edge agent across the jitter lab, a steady workload from the
//! scenario driver, and one fault per run (the cloud killed and restarted,
//! the link down, heavy loss, a cancel storm, slow-loris connections, a
//! flood beyond the cloud's limits, an edge restart). Each run counts what
//! the submitters got: results, explicit errors, refusals and lost tasks
//! (none may be lost), the time to recover and the worst latency of the
//! tasks in flight when the fault struck. A soak run samples memory and
//! file descriptors of both agents under a sustained load.

pub mod load;
mod report;
mod run;
mod soak;

pub use report::render;
pub use run::{run, Options};
pub use soak::{SoakPoint, SoakResult};

use crate::scenarios::record::{Outcome, TaskRecord};
use serde::{Deserialize, Serialize};

/// The faults, in the order the suite runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL of the cloud service mid-burst, restarted 3 s later.
    CloudKill,
    /// The link down for 10 s.
    LinkDown,
    /// 30 % loss each way for 10 s.
    Loss30,
    /// 1,500 requests abandoned after 2 ms, against the cloud and the edge.
    CancelStorm,
    /// Connections that dribble an HTTP/2 preface and never send a request.
    SlowLoris,
    /// Valid requests straight to the cloud, far beyond its limits, for 10 s.
    CloudOverload,
    /// The edge asked to stop (SIGTERM) with tasks in flight, then restarted.
    EdgeRestart,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::CloudKill,
        Fault::LinkDown,
        Fault::Loss30,
        Fault::CancelStorm,
        Fault::SlowLoris,
        Fault::CloudOverload,
        Fault::EdgeRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::CloudKill => "cloud-kill",
            Fault::LinkDown => "link-down",
            Fault::Loss30 => "loss-30",
            Fault::CancelStorm => "cancel-storm",
            Fault::SlowLoris => "slow-loris",
            Fault::CloudOverload => "cloud-overload",
            Fault::EdgeRestart => "edge-restart",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Fault::CloudKill => "cloud service killed with SIGKILL, restarted 3 s later",
            Fault::LinkDown => "link down both ways for 10 s",
            Fault::Loss30 => "30 % random loss both ways for 10 s",
            Fault::CancelStorm => {
                "1,500 requests given up after 2 ms, 100 at a time, against the cloud and against \
                 the edge's task API at once; then one valid request to each on the storm's \
                 connection and, if the server closed it (HTTP/2 rapid-reset protection), one on a \
                 new connection; both services must serve it"
            }
            Fault::SlowLoris => {
                "500 connections to the edge's task API sending the HTTP/2 preface one byte a \
                 second for 10 s"
            }
            Fault::CloudOverload => {
                "600 clients sending valid requests back to back straight to the cloud for 10 s \
                 (its limits: 2 running, 256 waiting)"
            }
            Fault::EdgeRestart => {
                "edge agent stopped with SIGTERM (it drains what it accepted) and started again"
            }
        }
    }
}

/// What one task's submitter got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Result,
    /// An answer that is an error: the agent accepted or judged the task
    /// and said why it has no result.
    Error,
    /// The task API could not be reached (a connection refused): nothing
    /// was accepted, and the submitter knows it at once.
    Refused,
    /// Accepted, or sent on a connection, and no answer: the connection
    /// broke under the request or nothing came within the driver's limit.
    Lost,
}

/// The fate of a driver record. tonic reports a connection that could not
/// be made as `Unavailable` with a connect error; a request cut off on a
/// live connection as a transport error.
pub fn fate(r: &TaskRecord) -> Fate {
    match r.outcome {
        Outcome::Ok => Fate::Result,
        Outcome::Failed => Fate::Error,
        Outcome::Lost => Fate::Lost,
        Outcome::Rejected => {
            let e = r.error.to_ascii_lowercase();
            let transport = e.contains("transport error")
                || e.contains("connection reset")
                || e.contains("broken pipe")
                || e.contains("connection closed")
                || e.contains("h2 protocol error");
            if e.starts_with("unavailable") && e.contains("connect") && !transport {
                Fate::Refused
            } else if transport {
                Fate::Lost
            } else {
                Fate::Error
            }
        }
    }
}

/// One fault's line of the suite's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRow {
    pub fault: String,
    pub sent: usize,
    pub results: usize,
    /// Explicit errors, refusals included.
    pub errors: usize,
    pub lost: usize,
    /// From the end of the fault to the first task sent after it that
    /// completed in the cloud again; `None` if none did.
    pub recovery_s: Option<f64>,
    /// The worst latency of the tasks in flight when the fault began.
    pub worst_inflight_s: Option<f64>,
}

/// The detail behind a row, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultDetail {
    pub refused: usize,
    pub inflight: usize,
    /// Tasks that ran locally after their offload failed.
    pub fell_back: usize,
    pub offloaded: usize,
    pub fault_start_s: f64,
    pub fault_end_s: f64,
    /// Distinct error messages with their counts.
    pub error_kinds: Vec<(String, usize)>,
    /// What the fault's own load reported (storm, slow-loris, flood).
    pub load: serde_json::Value,
    pub notes: Vec<String>,
}

/// Counts a run's records against a fault that began at `start_s` and
/// ended at `end_s` (seconds after the workload started).
pub fn summarize(
    fault: &str,
    records: &[TaskRecord],
    start_s: f64,
    end_s: f64,
) -> (FaultRow, FaultDetail) {
    let mut row = FaultRow {
        fault: fault.into(),
        sent: records.len(),
        results: 0,
        errors: 0,
        lost: 0,
        recovery_s: None,
        worst_inflight_s: None,
    };
    let mut d = FaultDetail {
        fault_start_s: start_s,
        fault_end_s: end_s,
        ..Default::default()
    };
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for r in records {
        match fate(r) {
            Fate::Result => row.results += 1,
            Fate::Error => row.errors += 1,
            Fate::Refused => {
                row.errors += 1;
                d.refused += 1;
            }
            Fate::Lost => row.lost += 1,
        }
        if fate(r) != Fate::Result {
            *kinds.entry(error_kind(&r.error)).or_default() += 1;
        }
        d.fell_back += usize::from(r.fell_back);
        d.offloaded += usize::from(r.offloaded());
    }
    let (start_ms, end_ms) = (start_s * 1e3, end_s * 1e3);
    let inflight: Vec<&TaskRecord> = records
        .iter()
        .filter(|r| r.sent_ms < start_ms && r.sent_ms + r.latency_ms > start_ms)
        .collect();
    d.inflight = inflight.len();
    row.worst_inflight_s = inflight
        .iter()
        .map(|r| r.latency_ms / 1e3)
        .max_by(f64::total_cmp);
    row.recovery_s = records
        .iter()
        .filter(|r| r.sent_ms >= end_ms && r.offloaded())
        .map(|r| (r.sent_ms + r.latency_ms - end_ms) / 1e3)
        .min_by(f64::total_cmp);
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    d.error_kinds = kinds;
    (row, d)
}

/// An error message without the task-specific numbers, to group by.
fn error_kind(msg: &str) -> String {
    let s: String = msg
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let mut s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    if s.is_empty() {
        "(no message)".into()
    } else {
        s
    }
}

/// Everything one run of the suite measured (faults.md and faults.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResult {
    pub command: String,
    pub date_utc: String,
    pub commit: String,
    pub machine: crate::support::stamp::Machine,
    pub scenario: String,
    pub policy: String,
    pub run_s: f64,
    pub fault_at_s: f64,
    pub faults: Vec<(FaultRow, FaultDetail)>,
    pub soak: Option<SoakResult>,
    pub wall_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::tests::rec;

    fn at(mut r: TaskRecord, sent_ms: f64, latency_ms: f64) -> TaskRecord {
        r.sent_ms = sent_ms;
        r.latency_ms = latency_ms;
        r
    }

    fn rejected(msg: &str) -> TaskRecord {
        let mut r = rec(0, Outcome::Rejected, 1.0, "");
        r.error = msg.into();
        r
    }

    #[test]
    fn refusals_errors_and_broken_connections_are_told_apart() {
        let refused = rejected("Unavailable: error trying to connect: tcp connect error: Connection refused (os error 111)");
        assert_eq!(fate(&refused), Fate::Refused);
        let cut = rejected("Unknown: transport error");
        assert_eq!(fate(&cut), Fate::Lost);
        let reset = rejected("Unavailable: connection reset by peer");
        assert_eq!(fate(&reset), Fate::Lost);
        let overloaded = rejected("ResourceExhausted: overloaded: 512 tasks queued");
        assert_eq!(fate(&overloaded), Fate::Error);
        assert_eq!(
            fate(&rec(0, Outcome::Failed, 1.0, "")),
            Fate::Error,
            "an answered failure is an explicit error"
        );
        assert_eq!(fate(&rec(0, Outcome::Lost, 1.0, "")), Fate::Lost);
        assert_eq!(fate(&rec(0, Outcome::Ok, 1.0, "local")), Fate::Result);
    }

    #[test]
    fn counts_inflight_worst_latency_and_recovery() {
        // Fault from 10 s to 13 s.
        let records = vec![
            at(rec(0, Outcome::Ok, 0.0, "cloud"), 1_000.0, 20.0),
            // In flight at 10 s: 9.5 s + 1.8 s.
            at(rec(1, Outcome::Ok, 0.0, "local"), 9_500.0, 1_800.0),
            at(rec(2, Outcome::Ok, 0.0, "cloud"), 9_900.0, 300.0),
            at(rejected("Unavailable: tcp connect error"), 11_000.0, 1.0),
            at(rec(4, Outcome::Lost, 0.0, ""), 12_000.0, 30_000.0),
            // After the fault: the first cloud completion is at 13.6 s,
            // although a later-sent task finished earlier locally.
            at(rec(5, Outcome::Ok, 0.0, "local"), 13_100.0, 50.0),
            at(rec(6, Outcome::Ok, 0.0, "cloud"), 13_200.0, 400.0),
            at(rec(7, Outcome::Ok, 0.0, "cloud"), 13_500.0, 200.0),
        ];
        let (row, d) = summarize("cloud-kill", &records, 10.0, 13.0);
        assert_eq!((row.sent, row.results, row.errors, row.lost), (8, 6, 1, 1));
        assert_eq!(d.refused, 1);
        assert_eq!(d.inflight, 2);
        assert!((row.worst_inflight_s.unwrap() - 1.8).abs() < 1e-9);
        assert!((row.recovery_s.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(d.error_kinds.len(), 2);
        // No task in flight and no cloud completion afterwards: both unknown.
        let (row, _) = summarize("link-down", &records[..1], 10.0, 13.0);
        assert_eq!((row.worst_inflight_s, row.recovery_s), (None, None));
    }

    #[test]
    fn names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
        assert_eq!(Fault::from_name("meteor"), None);
    }

    #[test]
    fn error_kinds_drop_numbers() {
        assert_eq!(
            error_kind("deadline   of 120 ms cannot be met"),
            "deadline of ### ms cannot be met"
        );
        assert_eq!(error_kind(""), "(no message)");
    }
}
