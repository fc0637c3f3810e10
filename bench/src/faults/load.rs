//! The load some faults bring, run by `scenario-driver` inside a namespace:
//! impatient clients that give up after a few milliseconds (the cancel
//! storm), slow-loris connections that never finish a request, and a flood
//! of valid requests beyond the cloud's limits. Each reports what happened
//! as JSON for the fault suite.

use anyhow::Result;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    pub sent: usize,
    /// Requests the client abandoned before an answer came.
    pub gave_up: usize,
    /// Whether one valid request right after the storm, on the storm's
    /// own connection, was answered with a result, and how long it took
    /// (ms). A server may close a connection that reset this many streams
    /// (HTTP/2 rapid-reset protection); then this one fails.
    pub after_ok: bool,
    pub after_ms: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_error: String,
    /// The same on a new connection, made when the first one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<OneRequest>,
}

/// One valid request's fate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OneRequest {
    pub ok: bool,
    pub ms: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl StormReport {
    /// A valid request succeeded after the storm, on the storm's
    /// connection or on a new one.
    pub fn served_after(&self) -> bool {
        self.after_ok || self.fresh.as_ref().is_some_and(|f| f.ok)
    }
}

/// Sends one valid request and waits up to `timeout` for a result.
pub async fn one_request(
    client: &EdgeAiServiceClient<Channel>,
    req: &proto::TaskRequest,
    id: &str,
    timeout: Duration,
) -> OneRequest {
    let mut c = client.clone();
    let mut q = req.clone();
    q.id = id.into();
    let t = Instant::now();
    let mut r = OneRequest::default();
    match tokio::time::timeout(timeout, c.offload_task(q)).await {
        Ok(Ok(resp)) if resp.get_ref().success => r.ok = true,
        Ok(Ok(resp)) => r.error = resp.into_inner().error_message,
        Ok(Err(status)) => r.error = format!("{:?}: {}", status.code(), status.message()),
        Err(_) => r.error = format!("no answer within {timeout:?}"),
    }
    r.ms = t.elapsed().as_secs_f64() * 1e3;
    r
}

/// `count` requests, `batch` at a time, each abandoned after `give_up`;
/// then one valid request with `after_timeout`.
pub async fn storm(
    client: &EdgeAiServiceClient<Channel>,
    req: &proto::TaskRequest,
    count: usize,
    batch: usize,
    give_up: Duration,
    after_timeout: Duration,
) -> StormReport {
    let mut r = StormReport::default();
    let mut seq = 0usize;
    while seq < count {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch.min(count - seq) {
            let mut c = client.clone();
            let mut q = req.clone();
            q.id = format!("impatient-{seq}");
            seq += 1;
            set.spawn(async move {
                tokio::time::timeout(give_up, c.offload_task(q))
                    .await
                    .is_err()
            });
        }
        while let Some(gave_up) = set.join_next().await {
            r.sent += 1;
            r.gave_up += usize::from(gave_up.unwrap_or(false));
        }
    }
    let after = one_request(client, req, "after-storm", after_timeout).await;
    r.after_ok = after.ok;
    r.after_ms = after.ms;
    r.after_error = after.error;
    r
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlowLorisReport {
    pub opened: usize,
    /// Connections the server refused outright.
    pub refused: usize,
    /// Connections the server closed while they dribbled.
    pub closed_by_server: usize,
}

/// `conns` TCP connections to `addr` that send the HTTP/2 preface one byte
/// per `every`, for `length`: a request that never completes.
pub async fn slow_loris(
    addr: &str,
    conns: usize,
    length: Duration,
    every: Duration,
) -> Result<SlowLorisReport> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let end = Instant::now() + length;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let addr = addr.to_string();
        set.spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return (false, false);
            };
            let mut buf = [0u8; 512];
            let mut i = 0;
            while Instant::now() < end {
                if s.write_all(&PREFACE[i % PREFACE.len()..][..1])
                    .await
                    .is_err()
                {
                    return (true, true);
                }
                i += 1;
                // A server that closes the connection is seen as EOF.
                match tokio::time::timeout(every, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return (true, true),
                    _ => {}
                }
            }
            (true, false)
        });
    }
    let mut r = SlowLorisReport::default();
    while let Some(res) = set.join_next().await {
        let (opened, closed) = res.unwrap_or((false, false));
        r.opened += usize::from(opened);
        r.refused += usize::from(!opened);
        r.closed_by_server += usize::from(closed);
    }
    Ok(r)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    pub sent: usize,
    pub ok: usize,
    /// Answers per gRPC status code (those that were not results).
    pub statuses: BTreeMap<String, usize>,
    /// Requests with no answer within the timeout.
    pub unanswered: usize,
}

/// `concurrency` clients sending valid requests back to back for `length`,
/// each waiting up to `timeout` for its answer.
pub async fn flood(
    client: &EdgeAiServiceClient<Channel>,
    req: &proto::TaskRequest,
    concurrency: usize,
    length: Duration,
    timeout: Duration,
) -> FloodReport {
    let end = Instant::now() + length;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let mut c = client.clone();
        let req = req.clone();
        set.spawn(async move {
            let mut r = FloodReport::default();
            let mut n = 0;
            while Instant::now() < end {
                let mut q = req.clone();
                q.id = format!("flood-{w}-{n}");
                n += 1;
                r.sent += 1;
                match tokio::time::timeout(timeout, c.offload_task(q)).await {
                    Ok(Ok(resp)) if resp.get_ref().success => r.ok += 1,
                    Ok(Ok(_)) => *r.statuses.entry("answered-failed".into()).or_default() += 1,
                    Ok(Err(s)) => {
                        *r.statuses.entry(format!("{:?}", s.code())).or_default() += 1;
                        // A refusal is immediate: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => r.unanswered += 1,
                }
            }
            r
        });
    }
    let mut total = FloodReport::default();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap_or_default();
        total.sent += r.sent;
        total.ok += r.ok;
        total.unanswered += r.unanswered;
        for (k, v) in r.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
    }
    total
}
