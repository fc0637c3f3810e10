//! The cloud's listeners: gRPC and QUIC in front of one [`Handler`].

mod grpc;
mod quic;

use crate::tls::TlsMaterial;
use agent_core::TaskError;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a server's shutdown waits for its in-flight requests and for
/// its clients to close their connections, once it stopped accepting.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What every listener serves: one request in, one answer (or error) out.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError>;
    /// [`Handler::handle`] for a request that arrived over `transport`
    /// (the listeners call this one, so a handler can count by transport).
    async fn handle_via(
        &self,
        transport: agent_core::Transport,
        req: proto::TaskRequest,
    ) -> Result<proto::TaskResponse, TaskError> {
        let _ = transport;
        self.handle(req).await
    }
    /// Largest payload accepted; listeners size their read limits from it.
    fn max_payload_bytes(&self) -> usize;
}

/// Where and how the listeners listen.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub grpc: String,
    /// QUIC (UDP) address; empty: no QUIC listener.
    pub quic: String,
    /// Concurrent streams per connection (QUIC transport parameter, HTTP/2 setting).
    pub max_concurrent_streams: u32,
}

/// Running listeners: gRPC always, QUIC when configured and TLS is on.
pub struct CloudListeners {
    pub grpc_addr: SocketAddr,
    /// `None` when QUIC is off (`quic` empty, or no TLS).
    pub quic_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl CloudListeners {
    /// Serves `handler` on gRPC and, with TLS, QUIC.
    pub async fn start(
        handler: Arc<dyn Handler>,
        cfg: &ListenConfig,
        tls: Option<&TlsMaterial>,
    ) -> anyhow::Result<CloudListeners> {
        let listener = tokio::net::TcpListener::bind(&cfg.grpc)
            .await
            .with_context(|| format!("binding gRPC on {}", cfg.grpc))?;
        let grpc_addr = listener.local_addr()?;
        let quic = match (tls, cfg.quic.is_empty()) {
            (Some(tls), false) => {
                let addr = crate::resolve(&cfg.quic).await?;
                Some(quic::endpoint(addr, tls, cfg.max_concurrent_streams)?)
            }
            (None, false) => {
                tracing::warn!(
                    "QUIC listener disabled: QUIC has no plaintext mode and --insecure is set"
                );
                None
            }
            _ => None,
        };
        let quic_addr = quic.as_ref().map(|e| e.local_addr()).transpose()?;
        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(grpc::serve(
            handler.clone(),
            listener,
            tls.map(|t| t.grpc_server()),
            cfg.max_concurrent_streams,
            stop.clone(),
        ))];
        if let Some(endpoint) = quic {
            tasks.push(tokio::spawn(quic::serve(handler, endpoint, stop.clone())));
        }
        Ok(CloudListeners {
            grpc_addr,
            quic_addr,
            stop,
            tasks,
        })
    }

    /// The line `agent cloud` prints when it listens (the demo and scripts parse it).
    pub fn listening_line(&self) -> String {
        let quic = self
            .quic_addr
            .map_or_else(|| "off".to_string(), |a| a.to_string());
        format!("cloud listening grpc={} quic={quic}", self.grpc_addr)
    }

    /// Stops accepting and lets in-flight requests finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}
