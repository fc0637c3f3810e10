//! A client of the edge agent's task API (the same `EdgeAIService` the
//! cloud serves): what applications, the CLI, the demo and the benchmark
//! driver use to submit work.

use crate::wire::{priority_to_proto, task_type_to_proto};
use agent_core::{deadline_to_unix_nanos, Priority, TaskType};
use anyhow::Context;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tonic::transport::Channel;

pub type TaskApiClient = EdgeAiServiceClient<Channel>;

/// How an address names a Unix socket: `unix:/path/to.sock`.
pub const UNIX_PREFIX: &str = "unix:";

/// The socket path of a `unix:` address; `None` for host:port.
pub fn unix_path(addr: &str) -> Option<&Path> {
    addr.strip_prefix(UNIX_PREFIX).map(Path::new)
}

/// Connects to the task API at `addr` (host:port or `unix:/path`, plaintext).
pub async fn connect(addr: &str) -> anyhow::Result<TaskApiClient> {
    connect_with(addr, None).await
}

/// Connects to the task API at `addr` (host:port or `unix:/path`), with
/// mutual TLS when `tls` is given: the submitter's certificate (signed by
/// the CA the edge trusts) and the name the edge's certificate must carry.
pub async fn connect_with(
    addr: &str,
    tls: Option<(&crate::tls::TlsMaterial, &str)>,
) -> anyhow::Result<TaskApiClient> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Over a Unix socket the URI only fills the HTTP/2 :authority.
    let authority = if unix_path(addr).is_some() {
        "localhost"
    } else {
        addr
    };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{authority}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some((material, server_name)) = tls {
        endpoint = endpoint.tls_config(material.grpc_client(server_name))?;
    }
    let ch = match unix_path(addr) {
        Some(path) => {
            let path: PathBuf = path.to_path_buf();
            endpoint
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        }
        None => endpoint.connect().await,
    }
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
        features: None,
    };
    let r = client.offload_task(req).await.map(|r| r.into_inner());
    (r, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_name_a_path() {
        assert_eq!(
            unix_path("unix:/run/edge.sock"),
            Some(Path::new("/run/edge.sock"))
        );
        assert_eq!(unix_path("127.0.0.1:50061"), None);
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_says_where() {
        let err = connect("unix:/nonexistent/edge.sock").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("unix:/nonexistent/edge.sock"),
            "{err:#}"
        );
    }
}
