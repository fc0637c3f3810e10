//! gRPC (tonic) offload client.

use super::{time_left, OffloadError, OffloadReply, OffloadRequest, Offloader};
use crate::wire::status_to_error;
use agent_core::Transport;
use async_trait::async_trait;
use prost::Message;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::error::Error as _;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

pub struct GrpcOffloader {
    client: EdgeAiServiceClient<Channel>,
}

impl GrpcOffloader {
    /// A lazily connecting client: the first offload opens the connection,
    /// and a lost connection is re-established by the next one.
    pub fn new(
        endpoint: &str,
        tls: Option<ClientTlsConfig>,
        max_message: usize,
        connect_timeout: Duration,
        (keep_alive, keep_alive_timeout): (Duration, Duration),
    ) -> anyhow::Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive_timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            ep = ep.tls_config(tls)?;
        }
        let client = EdgeAiServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Ok(Self { client })
    }
}

#[async_trait]
impl Offloader for GrpcOffloader {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let left = time_left(req.deadline)?;
        let bytes_up = req.request.encoded_len();
        let mut request = tonic::Request::new(req.request.clone());
        if let Some(left) = left {
            // Sent as grpc-timeout: the server side sees the budget too.
            request.set_timeout(left);
        }
        let mut client = self.client.clone();
        let started = Instant::now();
        let call = client.offload_task(request);
        let result = match left {
            Some(left) => tokio::time::timeout(left, call)
                .await
                .map_err(|_| OffloadError::Timeout)?,
            None => call.await,
        };
        let elapsed = started.elapsed();
        match result {
            Ok(resp) => {
                let response = resp.into_inner();
                Ok(OffloadReply {
                    bytes_down: response.encoded_len(),
                    response,
                    transport: Transport::Grpc,
                    elapsed,
                    bytes_up,
                    packets: None,
                })
            }
            // A status with a source came from the client's own stack (no
            // connection, reset stream); one without was sent by the server.
            Err(status) if status.source().is_some() || status.code() == Code::Unavailable => {
                Err(OffloadError::Transport {
                    transport: "grpc",
                    message: status.to_string(),
                })
            }
            Err(status) => Err(OffloadError::Rejected(status_to_error(&status))),
        }
    }
}
