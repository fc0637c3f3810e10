//! A client of the edge agent's task API (the same `EdgeAIService` the
//! cloud serves): what applications, the CLI, the demo and the benchmark
//! driver use to submit work.

use crate::wire::{priority_to_proto, task_type_to_proto};
use agent_core::{deadline_to_unix_nanos, Priority, TaskType};
use anyhow::Context;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::time::{Duration, Instant, SystemTime};
use tonic::transport::Channel;

pub type TaskApiClient = EdgeAiServiceClient<Channel>;

/// Connects to the task API at `addr` (host:port, plaintext).
pub async fn connect(addr: &str) -> anyhow::Result<TaskApiClient> {
    let ch = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the edge agent at {addr}"))?;
    Ok(EdgeAiServiceClient::new(ch))
}

/// One task to submit; `deadline` counts from sending.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: String,
    pub task_type: TaskType,
    pub payload: Vec<u8>,
    pub priority: Priority,
    pub deadline: Option<Duration>,
}

/// Sends one task; returns the answer and the latency the submitter saw.
pub async fn send(
    client: &mut TaskApiClient,
    s: Submission,
) -> (Result<proto::TaskResponse, tonic::Status>, Duration) {
    let started = Instant::now();
    let req = proto::TaskRequest {
        id: s.id,
        r#type: task_type_to_proto(s.task_type) as i32,
        payload: s.payload,
        priority: priority_to_proto(s.priority) as i32,
        deadline_unix_nano: deadline_to_unix_nanos(
            s.deadline.map(|d| started + d),
            started,
            SystemTime::now(),
        ),
        context: Default::default(),
    };
    let r = client.offload_task(req).await.map(|r| r.into_inner());
    (r, started.elapsed())
}
