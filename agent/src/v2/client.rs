//! Offloading to any KServe V2 server (our cloud's V2 listener, MLServer,
//! Triton): the edge prepares the payload exactly as its own engines do,
//! sends the raw tensor, and reads the raw output with the same code as
//! the local and cloud engines (`infer::answer`).

use super::tensor::{fits, input_tensor, output_from_response, OUTPUT_NAME};
use crate::infer::{answer, box_scale, prepare, DataType, InputSpec, ModelSpec, OutputSpec, Vocab};
use agent_core::{TaskError, TaskType, Transport};
use agent_net::wire::{output_response, status_to_error, task_type_from_proto};
use agent_net::{time_left, OffloadError, OffloadReply, OffloadRequest, Offloader};
use async_trait::async_trait;
use prost::Message;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::inference::infer_parameter::ParameterChoice;
use proto::inference::model_infer_request::InferRequestedOutputTensor;
use proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ServerReadyRequest,
};
use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

const TRANSPORT: &str = "v2";
/// The largest side or token count a server's metadata may ask for.
const MAX_DIM: i64 = 16_384;

/// Where a V2 server is, how to reach it, and which model serves each
/// task type.
#[derive(Debug, Clone)]
pub struct V2Target {
    /// host:port
    pub address: String,
    /// TLS (https) when set, else plaintext.
    pub tls: Option<ClientTlsConfig>,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive interval and timeout.
    pub keep_alive: (Duration, Duration),
    /// Largest message sent or received.
    pub max_message: usize,
    pub models: HashMap<TaskType, V2Model>,
}

/// The V2 model serving one task type.
#[derive(Debug, Clone)]
pub struct V2Model {
    /// The model's name on the server.
    pub name: String,
    /// The model's version; empty: the server's choice.
    pub version: String,
    /// The edge's spec for this task type: the payload kind (and its
    /// limits), the vocabulary, the labels, the detector's `min_score`.
    /// Tensor sizes come from the server's metadata, not from here.
    pub spec: ModelSpec,
}

/// An [`Offloader`] speaking the KServe V2 protocol (transport label `v2`).
pub struct V2Offloader {
    client: GrpcInferenceServiceClient<Channel>,
    models: HashMap<TaskType, Entry>,
}

struct Entry {
    model: V2Model,
    vocab: Option<Arc<Vocab>>,
    /// What the server's metadata said, until an error makes us ask again.
    resolved: Mutex<Option<Arc<Resolved>>>,
}

/// A model's input as read from its metadata.
#[derive(Debug)]
struct Resolved {
    input: InputSpec,
    output: String,
}

impl V2Offloader {
    /// A lazily connecting client: nothing is sent until the first offload
    /// or [`Offloader::ready`]; a lost connection is re-established by the
    /// next call. Text models' vocabularies are loaded here.
    pub fn new(target: V2Target) -> anyhow::Result<V2Offloader> {
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", target.address))?
            .connect_timeout(target.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(target.keep_alive.0)
            .keep_alive_timeout(target.keep_alive.1)
            .keep_alive_while_idle(true);
        if let Some(tls) = target.tls {
            ep = ep.tls_config(tls)?;
        }
        let client = GrpcInferenceServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(target.max_message)
            .max_encoding_message_size(target.max_message);
        let mut models = HashMap::new();
        for (t, model) in target.models {
            let vocab = match model.spec.input() {
                InputSpec::Text { vocab, .. } => Some(Arc::new(Vocab::load(&vocab)?)),
                _ => None,
            };
            models.insert(
                t,
                Entry {
                    model,
                    vocab,
                    resolved: Mutex::new(None),
                },
            );
        }
        Ok(V2Offloader { client, models })
    }

    /// The model's input from its metadata (cached).
    async fn resolve(
        &self,
        e: &Entry,
        left: Option<Duration>,
    ) -> Result<Arc<Resolved>, OffloadError> {
        if let Some(r) = e.resolved.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(r);
        }
        let mut request = tonic::Request::new(ModelMetadataRequest {
            name: e.model.name.clone(),
            version: e.model.version.clone(),
        });
        if let Some(left) = left {
            request.set_timeout(left);
        }
        let meta = self
            .client
            .clone()
            .model_metadata(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let r = Arc::new(resolve_metadata(&e.model.spec, &meta).map_err(|m| {
            OffloadError::Rejected(TaskError::UnsupportedTaskType(format!(
                "V2 model {:?}: {m}",
                e.model.name
            )))
        })?);
        *e.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        Ok(r)
    }

    async fn run(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let task_type = task_type_from_proto(req.request.r#type).ok_or_else(|| {
            OffloadError::Rejected(TaskError::UnsupportedTaskType(format!(
                "unknown task type {}",
                req.request.r#type
            )))
        })?;
        let e = self.models.get(&task_type).ok_or_else(|| {
            OffloadError::Rejected(TaskError::UnsupportedTaskType(format!(
                "no V2 model configured for {}",
                task_type.as_str()
            )))
        })?;
        let started = Instant::now();
        let resolved = self.resolve(e, time_left(req.deadline)?).await?;
        let result = self.infer(req, e, &resolved, started).await;
        if result.is_err() {
            // The model may have changed: read its metadata again next time.
            *e.resolved.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }

    async fn infer(
        &self,
        req: &OffloadRequest,
        e: &Entry,
        resolved: &Resolved,
        started: Instant,
    ) -> Result<OffloadReply, OffloadError> {
        let name = &e.model.name;
        let (input, vocab, payload) = (
            resolved.input.clone(),
            e.vocab.clone(),
            req.request.payload.clone(),
        );
        // Decoding an image is CPU work: off the runtime's threads.
        let prepared = tokio::task::spawn_blocking(move || {
            let p = prepare(&input, &payload, vocab.as_deref())?;
            let t = crate::infer::input_tensor(&p, &input);
            Ok::<_, String>((p, t))
        })
        .await
        .map_err(|err| OffloadError::Rejected(TaskError::Internal(err.to_string())))?;
        let (prepared, tensor) = prepared
            .map_err(|m| OffloadError::Rejected(TaskError::InvalidInput(format!("{name}: {m}"))))?;
        let message = ModelInferRequest {
            model_name: name.clone(),
            model_version: e.model.version.clone(),
            id: req.request.id.clone(),
            inputs: vec![input_tensor(&tensor)],
            outputs: vec![InferRequestedOutputTensor {
                name: resolved.output.clone(),
                ..Default::default()
            }],
            raw_input_contents: vec![tensor.data],
            ..Default::default()
        };
        let bytes_up = message.encoded_len();
        let mut request = tonic::Request::new(message);
        if let Some(left) = time_left(req.deadline)? {
            // Sent as grpc-timeout: the server side sees the budget too.
            request.set_timeout(left);
        }
        let resp = self
            .client
            .clone()
            .model_infer(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let elapsed = started.elapsed();
        let bytes_down = resp.encoded_len();
        let output = read_answer(&resp, resolved, &e.model, box_scale(&prepared))
            .map_err(|m| OffloadError::Rejected(TaskError::Internal(format!("{name}: {m}"))))?;
        let param = |k: &str| match resp
            .parameters
            .get(k)
            .and_then(|p| p.parameter_choice.as_ref())
        {
            Some(ParameterChoice::Int64Param(v)) => *v,
            _ => 0,
        };
        let response = proto::TaskResponse {
            processed_by: "cloud".into(),
            duration_nano: param("duration_nano"),
            queue_nano: param("queue_nano"),
            inference_nano: param("inference_nano"),
            ..output_response(&req.request.id, &output)
        };
        Ok(OffloadReply {
            response,
            transport: Transport::V2,
            elapsed,
            bytes_up,
            bytes_down,
            packets: None,
        })
    }
}

/// The answer from a V2 response, read as the edge's spec says.
fn read_answer(
    resp: &ModelInferResponse,
    resolved: &Resolved,
    model: &V2Model,
    scale: (f32, f32),
) -> Result<agent_core::Output, String> {
    let t = output_from_response(resp, &resolved.output)?;
    let ok = match model.spec.output {
        OutputSpec::Logits => fits(&t.shape, &[1, -1]),
        OutputSpec::Boxes { .. } => fits(&t.shape, &[1, -1, 6]),
    };
    if !ok {
        return Err(format!(
            "output shape {:?} is not one sample's {}",
            t.shape,
            match model.spec.output {
                OutputSpec::Logits => "[1, classes] scores",
                OutputSpec::Boxes { .. } => "[1, K, 6] boxes",
            }
        ));
    }
    let mut out = answer(&t.f32s(), &model.spec, scale);
    out.model = if resp.model_name.is_empty() {
        model.name.clone()
    } else {
        resp.model_name.clone()
    };
    out.model_version = if resp.model_version.is_empty() {
        model.version.clone()
    } else {
        resp.model_version.clone()
    };
    Ok(out)
}

/// The edge's payload kind with the tensor sizes the metadata gives,
/// if the model's one input is a tensor that payload can become.
fn resolve_metadata(spec: &ModelSpec, meta: &ModelMetadataResponse) -> Result<Resolved, String> {
    let [input] = meta.inputs.as_slice() else {
        return Err(format!("has {} inputs, expected one", meta.inputs.len()));
    };
    let shape = &input.shape;
    let dim = |i: usize| -> Result<usize, String> {
        match shape.get(i) {
            Some(&d) if (1..=MAX_DIM).contains(&d) => Ok(d as usize),
            _ => Err(format!(
                "input shape {shape:?}: size {i} is not fixed and sane"
            )),
        }
    };
    let datatype = DataType::parse(&input.datatype);
    let batch_ok = shape.first().is_some_and(|&b| b == -1 || b >= 1);
    let want = |dt: DataType, rank: usize| -> Result<(), String> {
        if datatype != Some(dt) || shape.len() != rank || !batch_ok {
            return Err(format!(
                "input {:?} is {} {shape:?}; a {} payload becomes {} of rank {rank} with a free or positive batch",
                input.name,
                input.datatype,
                kind_name(&spec.input()),
                dt.as_str()
            ));
        }
        Ok(())
    };
    let input_spec = match spec.input() {
        InputSpec::Image { max_pixels, .. } => {
            want(DataType::Uint8, 4)?;
            if shape[3] != 3 {
                return Err(format!("input shape {shape:?} is not RGB (last size 3)"));
            }
            InputSpec::Image {
                height: dim(1)?,
                width: dim(2)?,
                max_pixels,
            }
        }
        InputSpec::Text {
            vocab, max_bytes, ..
        } => {
            want(DataType::Int64, 2)?;
            InputSpec::Text {
                vocab,
                max_tokens: dim(1)?,
                max_bytes,
            }
        }
        InputSpec::Gray8 { .. } => {
            want(DataType::Fp32, 4)?;
            if shape[1] != 1 {
                return Err(format!("input shape {shape:?} is not one channel"));
            }
            InputSpec::Gray8 {
                height: dim(2)?,
                width: dim(3)?,
            }
        }
    };
    let output = match meta.outputs.as_slice() {
        [] => OUTPUT_NAME.to_string(),
        [one] => one.name.clone(),
        many => many
            .iter()
            .find(|o| o.name == OUTPUT_NAME)
            .map(|o| o.name.clone())
            .ok_or_else(|| format!("{} outputs and none named {OUTPUT_NAME:?}", many.len()))?,
    };
    if let Some(o) = meta.outputs.iter().find(|o| o.name == output) {
        let rank = match spec.output {
            OutputSpec::Logits => 2,
            OutputSpec::Boxes { .. } => 3,
        };
        if o.datatype != DataType::Fp32.as_str() || o.shape.len() != rank {
            return Err(format!(
                "output {:?} is {} {:?}, expected FP32 of rank {rank}",
                o.name, o.datatype, o.shape
            ));
        }
    }
    Ok(Resolved {
        input: input_spec,
        output,
    })
}

fn kind_name(spec: &InputSpec) -> &'static str {
    match spec {
        InputSpec::Image { .. } => "image",
        InputSpec::Text { .. } => "text",
        InputSpec::Gray8 { .. } => "grayscale",
    }
}

/// A failed call as an offload error: the client's own stack (no
/// connection, reset stream) or an unavailable server is a transport
/// failure; a passed deadline a timeout; anything else the server's refusal.
fn status_error(status: Status) -> OffloadError {
    if status.source().is_some() || status.code() == Code::Unavailable {
        return OffloadError::Transport {
            transport: TRANSPORT,
            message: status.to_string(),
        };
    }
    match status.code() {
        Code::DeadlineExceeded => OffloadError::Timeout,
        // tonic's server answers an expired grpc-timeout this way.
        Code::Cancelled if status.message().contains("Timeout expired") => OffloadError::Timeout,
        Code::NotFound => {
            OffloadError::Rejected(TaskError::UnsupportedTaskType(status.message().to_string()))
        }
        _ => OffloadError::Rejected(status_to_error(&status)),
    }
}

/// `fut` within `left` (none: no limit); past it, [`OffloadError::Timeout`].
async fn within<T>(
    left: Option<Duration>,
    fut: impl Future<Output = Result<T, OffloadError>>,
) -> Result<T, OffloadError> {
    match left {
        Some(left) => tokio::time::timeout(left, fut)
            .await
            .map_err(|_| OffloadError::Timeout)?,
        None => fut.await,
    }
}

#[async_trait]
impl Offloader for V2Offloader {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let left = time_left(req.deadline)?;
        within(left, self.run(req)).await
    }

    /// Asks the server whether it is ready (`ServerReady`).
    async fn ready(&self) -> Result<(), OffloadError> {
        let r = self
            .client
            .clone()
            .server_ready(ServerReadyRequest {})
            .await
            .map_err(|s| {
                if s.source().is_some() {
                    OffloadError::Connect {
                        transport: TRANSPORT,
                        message: s.to_string(),
                    }
                } else {
                    status_error(s)
                }
            })?;
        if r.into_inner().ready {
            Ok(())
        } else {
            Err(OffloadError::Transport {
                transport: TRANSPORT,
                message: "the V2 server is not ready".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::inference::model_metadata_response::TensorMetadata;

    fn spec(input: InputSpec, output: OutputSpec) -> ModelSpec {
        ModelSpec {
            path: "unused".into(),
            name: "m".into(),
            version: "1".into(),
            height: 8,
            width: 8,
            input: Some(input),
            output,
            labels: Vec::new(),
            expected_ms: 1.0,
            max_batch: 1,
            max_batch_delay_ms: 0.0,
            split: None,
        }
    }

    fn meta(datatype: &str, shape: Vec<i64>) -> ModelMetadataResponse {
        ModelMetadataResponse {
            name: "m".into(),
            inputs: vec![TensorMetadata {
                name: "input".into(),
                datatype: datatype.into(),
                shape,
            }],
            outputs: vec![TensorMetadata {
                name: "output".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 10],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sizes_come_from_the_metadata() {
        let image = spec(
            InputSpec::Image {
                height: 8,
                width: 8,
                max_pixels: 100,
            },
            OutputSpec::Logits,
        );
        let r = resolve_metadata(&image, &meta("UINT8", vec![-1, 96, 64, 3])).unwrap();
        assert_eq!(
            r.input,
            InputSpec::Image {
                height: 96,
                width: 64,
                max_pixels: 100
            }
        );
        assert_eq!(r.output, "output");
        for bad in [
            meta("FP32", vec![-1, 96, 64, 3]),
            meta("UINT8", vec![-1, 96, 64]),
            meta("UINT8", vec![-1, 96, -1, 3]),
            meta("UINT8", vec![-1, 96, 64, 1]),
            meta("UINT8", vec![0, 96, 64, 3]),
        ] {
            assert!(resolve_metadata(&image, &bad).is_err(), "{bad:?}");
        }
        let text = spec(
            InputSpec::Text {
                vocab: "v".into(),
                max_tokens: 4,
                max_bytes: 10,
            },
            OutputSpec::Logits,
        );
        let r = resolve_metadata(&text, &meta("INT64", vec![-1, 32])).unwrap();
        assert!(matches!(r.input, InputSpec::Text { max_tokens: 32, .. }));
        let mut boxes = meta("INT64", vec![-1, 32]);
        boxes.outputs[0].shape = vec![-1, 5, 6];
        assert!(resolve_metadata(&text, &boxes).is_err(), "logits expected");
    }

    #[test]
    fn statuses_map_like_the_grpc_offloader() {
        assert!(matches!(
            status_error(Status::invalid_argument("x")),
            OffloadError::Rejected(TaskError::InvalidInput(_))
        ));
        assert!(matches!(
            status_error(Status::not_found("x")),
            OffloadError::Rejected(TaskError::UnsupportedTaskType(_))
        ));
        assert!(matches!(
            status_error(Status::unavailable("x")),
            OffloadError::Transport { .. }
        ));
        assert!(matches!(
            status_error(Status::deadline_exceeded("x")),
            OffloadError::Timeout
        ));
        assert!(matches!(
            status_error(Status::resource_exhausted("x")),
            OffloadError::Rejected(TaskError::Overloaded(_))
        ));
    }
}
