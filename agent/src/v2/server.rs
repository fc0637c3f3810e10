//! The cloud's KServe V2 listener: `GRPCInferenceService` over tonic in
//! front of a [`V2Backend`] (the cloud handler: its engines and admission).

use super::tensor::{fits, input_from_request, output_tensor, OUTPUT_NAME};
use crate::infer::{RawInference, RawSignature, RawTensor};
use agent_core::{TaskError, TaskType};
use agent_net::wire::error_to_status;
use anyhow::Context;
use proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use proto::inference::infer_parameter::ParameterChoice;
use proto::inference::model_metadata_response::TensorMetadata;
use proto::inference::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// `ServerMetadata`'s name.
pub const SERVER_NAME: &str = "edge-offload-cloud";
/// Every model's platform in `ModelMetadata`.
pub const PLATFORM: &str = "pytorch_libtorch";

/// What the V2 listener serves: the models' raw forward passes.
#[async_trait::async_trait]
pub trait V2Backend: Send + Sync + 'static {
    /// The models served and their raw signatures.
    async fn signatures(&self) -> Vec<(TaskType, RawSignature)>;
    /// Largest input tensor accepted, in bytes.
    fn max_payload_bytes(&self) -> usize;
    /// Runs one raw forward pass under the service's admission rules;
    /// returns it with the time it waited for a slot.
    async fn forward(
        &self,
        task_type: TaskType,
        input: RawTensor,
        deadline: Option<Instant>,
    ) -> Result<(RawInference, Duration), TaskError>;
}

/// A running V2 listener.
pub struct V2Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl V2Server {
    /// Binds `addr` and serves `backend` until [`V2Server::shutdown`] or
    /// `stop` is cancelled (mutual TLS with `tls`, else plaintext).
    pub async fn start(
        backend: Arc<dyn V2Backend>,
        addr: &str,
        tls: Option<tonic::transport::ServerTlsConfig>,
        max_streams: u32,
        stop: CancellationToken,
    ) -> anyhow::Result<V2Server> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the V2 listener on {addr}"))?;
        let addr = listener.local_addr()?;
        let models = backend.signatures().await;
        // Room for twice the largest input: a batch over the limit, or a
        // tensor of a wider datatype than the model takes, still gets a
        // clear INVALID_ARGUMENT from the checks; past that the transport
        // refuses the message (OUT_OF_RANGE).
        let max_msg = backend.max_payload_bytes().saturating_mul(2) + 64 * 1024;
        let service = Service {
            backend,
            models: Mutex::new(models.into_iter().collect()),
        };
        let svc = GrpcInferenceServiceServer::new(service)
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(usize::MAX);
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
            .http2_keepalive_interval(Some(Duration::from_secs(10)));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            Ok(())
        });
        Ok(V2Server { addr, stop, task })
    }

    /// Stops accepting and lets in-flight requests finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

struct Service {
    backend: Arc<dyn V2Backend>,
    /// By task type; a model update shows in the answers, which refresh it.
    models: Mutex<HashMap<TaskType, RawSignature>>,
}

impl Service {
    fn find(&self, name: &str, version: &str) -> Result<(TaskType, RawSignature), Status> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let (t, sig) = models
            .iter()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| Status::not_found(format!("unknown model {name:?}")))?;
        if !version.is_empty() && version != sig.version {
            return Err(Status::not_found(format!(
                "model {name:?} version {version:?} is not available (serving {:?})",
                sig.version
            )));
        }
        Ok((*t, sig.clone()))
    }

    fn learn(&self, task_type: TaskType, inf: &RawInference) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sig) = models.get_mut(&task_type) {
            sig.version.clone_from(&inf.model_version);
            let mut dims = inf.output.shape.clone();
            if let Some(b) = dims.first_mut() {
                *b = -1;
            }
            sig.output.1 = dims;
        }
    }

    async fn infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<(TaskType, ModelInferResponse, Duration, Duration), Status> {
        let received = Instant::now();
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| received + d);
        let req = request.into_inner();
        let (task_type, sig) = self.find(&req.model_name, &req.model_version)?;
        let bad = |e: String| Status::invalid_argument(format!("{}: {e}", sig.name));
        let input = input_from_request(&req, self.backend.max_payload_bytes()).map_err(bad)?;
        let (datatype, dims) = &sig.input;
        if input.datatype != *datatype {
            return Err(bad(format!(
                "input is {}, the model takes {}",
                input.datatype.as_str(),
                datatype.as_str()
            )));
        }
        if !fits(&input.shape, dims) {
            return Err(bad(format!(
                "input shape {:?} does not fit {dims:?}",
                input.shape
            )));
        }
        if let Some(o) = req.outputs.iter().find(|o| o.name != OUTPUT_NAME) {
            return Err(bad(format!(
                "unknown output tensor {:?} (the model's output is {OUTPUT_NAME:?})",
                o.name
            )));
        }
        let (inf, queued) = self
            .backend
            .forward(task_type, input, deadline)
            .await
            .map_err(|e| error_to_status(&e))?;
        self.learn(task_type, &inf);
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let int = |v: i64| InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(v)),
        };
        let parameters = HashMap::from([
            ("queue_nano".to_string(), int(nanos(queued))),
            ("inference_nano".to_string(), int(nanos(inf.elapsed))),
            ("duration_nano".to_string(), int(nanos(received.elapsed()))),
        ]);
        let resp = ModelInferResponse {
            model_name: inf.model.clone(),
            model_version: inf.model_version.clone(),
            id: req.id,
            parameters,
            outputs: vec![output_tensor(&inf.output)],
            raw_output_contents: vec![inf.output.data],
        };
        Ok((task_type, resp, queued, inf.elapsed))
    }
}

/// The `grpc-timeout` header's value (digits and a unit: H M S m u n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The cloud's metrics label for an error (as the cloud's `Metered` names them).
fn error_label(e: &Status) -> &'static str {
    match e.code() {
        tonic::Code::InvalidArgument => "invalid_input",
        tonic::Code::NotFound | tonic::Code::Unimplemented => "unsupported",
        tonic::Code::DeadlineExceeded => "deadline",
        tonic::Code::ResourceExhausted => "overloaded",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Cancelled => "cancelled",
        _ => "internal",
    }
}

fn metadata(t: &(crate::infer::DataType, Vec<i64>), name: &str) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: t.0.as_str().into(),
        shape: t.1.clone(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        // The listener starts once the models are loaded.
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.find(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let (_, sig) = self.find(&r.name, &r.version)?;
        Ok(Response::new(ModelMetadataResponse {
            name: sig.name.clone(),
            versions: vec![sig.version.clone()],
            platform: PLATFORM.into(),
            inputs: vec![metadata(&sig.input, super::INPUT_NAME)],
            outputs: vec![metadata(&sig.output, OUTPUT_NAME)],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let name = request.get_ref().model_name.clone();
        let task_type = self.find(&name, "").map(|(t, _)| t.as_str()).ok();
        ::metrics::gauge!("cloud_inflight_requests").increment(1.0);
        let r = self.infer(request).await;
        ::metrics::gauge!("cloud_inflight_requests").decrement(1.0);
        let outcome = match &r {
            Ok((_, _, queued, inference)) => {
                let t = task_type.unwrap_or("unknown");
                ::metrics::histogram!("cloud_inference_duration_seconds", "task_type" => t)
                    .record(inference.as_secs_f64());
                ::metrics::histogram!("cloud_queue_wait_seconds", "task_type" => t)
                    .record(queued.as_secs_f64());
                "ok"
            }
            Err(e) => {
                let label = error_label(e);
                // The same reasons the cloud's `Metered` counts as refusals.
                if matches!(
                    label,
                    "overloaded" | "invalid_input" | "unsupported" | "deadline" | "unavailable"
                ) {
                    ::metrics::counter!("cloud_admission_refusals_total", "reason" => label)
                        .increment(1);
                }
                label
            }
        };
        ::metrics::counter!(
            "cloud_requests_total",
            "transport" => "v2",
            "task_type" => task_type.unwrap_or("unknown"),
            "outcome" => outcome
        )
        .increment(1);
        ::metrics::histogram!("cloud_request_duration_seconds", "transport" => "v2")
            .record(started.elapsed().as_secs_f64());
        r.map(|(_, resp, _, _)| Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }
}
