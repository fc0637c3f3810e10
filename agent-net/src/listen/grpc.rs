//! gRPC listener of the cloud service.

use super::{Handler, SHUTDOWN_GRACE};
use crate::wire::error_to_status;
use proto::edge_ai_service_server::{EdgeAiService, EdgeAiServiceServer};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub struct GrpcCloud {
    handler: Arc<dyn Handler>,
}

#[tonic::async_trait]
impl EdgeAiService for GrpcCloud {
    async fn offload_task(
        &self,
        request: Request<proto::TaskRequest>,
    ) -> Result<Response<proto::TaskResponse>, Status> {
        self.handler
            .handle_via(agent_core::Transport::Grpc, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| error_to_status(&e))
    }
}

/// Serves until `stop` is cancelled, then finishes in-flight requests
/// within [`SHUTDOWN_GRACE`]: a client that keeps its connection open and
/// answers nothing, not even the closing ping of the graceful shutdown (a
/// client process stuck elsewhere), would hold it up forever; past the
/// grace its connection is dropped.
pub async fn serve(
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    max_streams: u32,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Room for the payload plus the request's other fields.
    let max_msg = handler.max_payload_bytes() + 64 * 1024;
    let svc = EdgeAiServiceServer::new(GrpcCloud { handler }).max_decoding_message_size(max_msg);
    // Answers go out at once (no Nagle delay behind the client's ACK).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        },
    );
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(max_streams))
        .concurrency_limit_per_connection(max_streams as usize)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let serving = builder
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return Ok(served?),
        _ = stop.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
        Ok(served) => served?,
        Err(_) => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "gRPC connections still open after the grace; closing them"
        ),
    }
    Ok(())
}
