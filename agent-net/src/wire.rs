//! Every mapping between the core's types and the wire (`edge_ai.proto`):
//! task types and priorities, tasks and requests, results and responses,
//! decisions, errors as gRPC statuses or in-band `ErrorKind`s, and the
//! QUIC streams' framing.

use agent_core::{
    deadline_from_unix_nanos, deadline_to_unix_nanos, Decision, Detection, ExecPath, Outlook,
    Output, Priority, RunTiming, Task, TaskError, TaskResult, TaskType,
};
use prost::Message;
use proto::ErrorKind;
use std::time::{Duration, Instant, SystemTime};
use tonic::{Code, Status};

pub fn task_type_from_proto(v: i32) -> Option<TaskType> {
    match proto::TaskType::try_from(v).ok()? {
        proto::TaskType::ImageClassification => Some(TaskType::ImageClassification),
        proto::TaskType::ObjectDetection => Some(TaskType::ObjectDetection),
        proto::TaskType::NlpAnalysis => Some(TaskType::NlpAnalysis),
        proto::TaskType::Unspecified => None,
    }
}

pub fn task_type_to_proto(t: TaskType) -> proto::TaskType {
    match t {
        TaskType::ImageClassification => proto::TaskType::ImageClassification,
        TaskType::ObjectDetection => proto::TaskType::ObjectDetection,
        TaskType::NlpAnalysis => proto::TaskType::NlpAnalysis,
    }
}

/// Unset or unknown priorities are medium.
pub fn priority_from_proto(v: i32) -> Priority {
    match proto::Priority::try_from(v).unwrap_or(proto::Priority::Unspecified) {
        proto::Priority::Low => Priority::Low,
        proto::Priority::Unspecified | proto::Priority::Medium => Priority::Medium,
        proto::Priority::High => Priority::High,
        proto::Priority::Critical => Priority::Critical,
    }
}

pub fn priority_to_proto(p: Priority) -> proto::Priority {
    match p {
        Priority::Low => proto::Priority::Low,
        Priority::Medium => proto::Priority::Medium,
        Priority::High => proto::Priority::High,
        Priority::Critical => proto::Priority::Critical,
    }
}

/// A request as the agent's task, received at `now` (`wall_now` on the
/// wall clock, which the deadline on the wire is relative to).
pub fn task_from_request(
    req: proto::TaskRequest,
    now: Instant,
    wall_now: SystemTime,
) -> Result<Task, TaskError> {
    let task_type = task_type_from_proto(req.r#type).ok_or_else(|| {
        TaskError::InvalidInput(format!("unknown or missing task type {}", req.r#type))
    })?;
    if req.id.is_empty() {
        return Err(TaskError::InvalidInput("task id is empty".into()));
    }
    Ok(Task {
        id: req.id,
        task_type,
        payload: req.payload,
        priority: priority_from_proto(req.priority),
        deadline: deadline_from_unix_nanos(req.deadline_unix_nano, now, wall_now),
        created_at: now,
        context: req.context,
    })
}

/// The request that offloads `task`, sent at `now` (`wall_now`).
pub fn task_to_request(task: &Task, now: Instant, wall_now: SystemTime) -> proto::TaskRequest {
    proto::TaskRequest {
        id: task.id.clone(),
        r#type: task_type_to_proto(task.task_type) as i32,
        payload: task.payload.clone(),
        priority: priority_to_proto(task.priority) as i32,
        deadline_unix_nano: deadline_to_unix_nanos(task.deadline, now, wall_now),
        context: task.context.clone(),
        features: None,
    }
}

/// A successful response's answer.
pub fn output_from_response(r: &proto::TaskResponse) -> Output {
    Output {
        class: i64::from(r.predicted_class),
        confidence: r.confidence,
        label: r.label.clone(),
        boxes: r
            .boxes
            .iter()
            .map(|b| Detection {
                class: i64::from(b.class_id),
                label: b.label.clone(),
                score: b.score,
                x1: b.x1,
                y1: b.y1,
                x2: b.x2,
                y2: b.y2,
            })
            .collect(),
        model: r.model_name.clone(),
        model_version: r.model_version.clone(),
    }
}

/// The successful response carrying a model's answer.
pub fn output_response(task_id: &str, o: &Output) -> proto::TaskResponse {
    proto::TaskResponse {
        task_id: task_id.to_string(),
        success: true,
        output: serde_json::to_vec(o).unwrap_or_default(),
        predicted_class: i32::try_from(o.class).unwrap_or(-1),
        confidence: o.confidence,
        label: o.label.clone(),
        boxes: o
            .boxes
            .iter()
            .map(|b| proto::BoundingBox {
                x1: b.x1,
                y1: b.y1,
                x2: b.x2,
                y2: b.y2,
                class_id: i32::try_from(b.class).unwrap_or(-1),
                label: b.label.clone(),
                score: b.score,
            })
            .collect(),
        model_name: o.model.clone(),
        model_version: o.model_version.clone(),
        ..Default::default()
    }
}

/// The edge API's answer: the result with where it ran, how, and why.
pub fn result_to_response(result: &TaskResult) -> proto::TaskResponse {
    let mut resp = match &result.outcome {
        Ok(o) => output_response(&result.task_id, o),
        Err(e) => error_response(&result.task_id, e),
    };
    resp.processed_by = match (result.processed_by, result.transport) {
        (Some(ExecPath::Cloud), Some(t)) => format!("cloud/{}", t.as_str()),
        (Some(p), _) => p.as_str().into(),
        (None, _) => String::new(),
    };
    resp.transport = result
        .transport
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();
    resp.fell_back = result.fell_back;
    resp.duration_nano = i64::try_from(result.duration.as_nanos()).unwrap_or(i64::MAX);
    if let Some(t) = result.timing {
        resp.queue_nano = i64::try_from(t.queued.as_nanos()).unwrap_or(i64::MAX);
        resp.inference_nano = i64::try_from(t.inference.as_nanos()).unwrap_or(i64::MAX);
    }
    resp.decision = result.decision.as_ref().map(decision_to_proto);
    resp
}

/// How the cloud says it spent a request's time (none when it did not
/// measure an inference).
pub fn timing_from_response(r: &proto::TaskResponse) -> Option<RunTiming> {
    (r.inference_nano > 0).then(|| RunTiming {
        queued: Duration::from_nanos(r.queue_nano.max(0) as u64),
        inference: Duration::from_nanos(r.inference_nano as u64),
    })
}

pub fn decision_to_proto(d: &Decision) -> proto::Decision {
    let o = d.offload.unwrap_or_default();
    proto::Decision {
        policy: d.policy.into(),
        path: d.path.as_str().into(),
        reason: d.reason.to_string(),
        local_queue_ms: d.local.queue_ms,
        local_inference_ms: d.local.inference_ms,
        local_total_ms: d.local.total_ms,
        upload_ms: o.upload_ms,
        rtt_ms: o.rtt_ms,
        jitter_ms: o.jitter_ms,
        jitter_penalty_ms: o.jitter_penalty_ms,
        cloud_inference_ms: o.cloud_inference_ms,
        download_ms: o.download_ms,
        offload_total_ms: o.total_ms,
        network_source: d
            .network_source
            .map(|s| s.as_str())
            .unwrap_or("none")
            .into(),
        hedged: d.hedge,
        // The endpoint's and split point's names are the shell's: the edge
        // API fills them in.
        endpoint: String::new(),
        split_point: String::new(),
        head_ms: o.head_ms,
        local_congestion_ms: d.local.congestion_ms,
        offload_congestion_ms: o.congestion_ms,
        loss_rate: o.loss_rate,
        p_loss: o.p_loss,
        loss_delay_ms: o.loss_delay_ms,
        local_outlook: d.local_outlook.map(outlook_to_proto),
        offload_outlook: d.offload_outlook.map(outlook_to_proto),
    }
}

fn outlook_to_proto(o: Outlook) -> proto::PathOutlook {
    proto::PathOutlook {
        mean_ms: o.mean_ms,
        p50_ms: o.p50_ms,
        p95_ms: o.p95_ms,
        p_meet: o.p_meet,
        correction_ms: o.correction_ms,
    }
}

pub fn error_kind(e: &TaskError) -> ErrorKind {
    match e {
        TaskError::InvalidInput(_) => ErrorKind::InvalidInput,
        TaskError::UnsupportedTaskType(_) => ErrorKind::UnsupportedTaskType,
        TaskError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
        TaskError::Overloaded(_) => ErrorKind::Overloaded,
        TaskError::Unavailable(_) => ErrorKind::Unavailable,
        TaskError::Internal(_) => ErrorKind::Internal,
        TaskError::Cancelled(_) => ErrorKind::Cancelled,
    }
}

pub fn error_to_status(e: &TaskError) -> Status {
    let code = match e {
        TaskError::InvalidInput(_) => Code::InvalidArgument,
        TaskError::UnsupportedTaskType(_) => Code::Unimplemented,
        TaskError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        TaskError::Overloaded(_) => Code::ResourceExhausted,
        TaskError::Unavailable(_) => Code::Unavailable,
        TaskError::Internal(_) => Code::Internal,
        TaskError::Cancelled(_) => Code::Cancelled,
    };
    Status::new(code, e.to_string())
}

/// A status from the server (or the gRPC stack) as a task error.
pub fn status_to_error(s: &Status) -> TaskError {
    let msg = s.message().to_string();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => TaskError::InvalidInput(msg),
        Code::Unimplemented => TaskError::UnsupportedTaskType(msg),
        Code::DeadlineExceeded | Code::Cancelled => TaskError::DeadlineExceeded(msg),
        Code::ResourceExhausted => TaskError::Overloaded(msg),
        Code::Unavailable | Code::Unknown => TaskError::Unavailable(msg),
        _ => TaskError::Internal(format!("{:?}: {msg}", s.code())),
    }
}

pub fn error_from_kind(kind: i32, msg: String) -> TaskError {
    match ErrorKind::try_from(kind).unwrap_or(ErrorKind::Unspecified) {
        ErrorKind::InvalidInput => TaskError::InvalidInput(msg),
        ErrorKind::UnsupportedTaskType => TaskError::UnsupportedTaskType(msg),
        ErrorKind::DeadlineExceeded => TaskError::DeadlineExceeded(msg),
        ErrorKind::Overloaded => TaskError::Overloaded(msg),
        ErrorKind::Unavailable => TaskError::Unavailable(msg),
        ErrorKind::Cancelled => TaskError::Cancelled(msg),
        ErrorKind::Internal | ErrorKind::Unspecified => TaskError::Internal(msg),
    }
}

/// A failed response carrying `e` (used where errors travel in-band).
pub fn error_response(task_id: &str, e: &TaskError) -> proto::TaskResponse {
    proto::TaskResponse {
        task_id: task_id.to_string(),
        success: false,
        error_message: e.to_string(),
        error_kind: error_kind(e) as i32,
        ..Default::default()
    }
}

/// A message as one QUIC stream carries it: its length as a varint, then
/// the message.
pub fn encode_frame(msg: &impl Message) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

/// The request a QUIC stream carried (the whole stream, read up to the
/// listener's size limit): exactly one frame. A truncated frame, a length
/// past the end, bytes after the frame or a malformed message are errors;
/// nothing is allocated beyond what `frame` holds.
pub fn decode_request_frame(frame: &[u8]) -> Result<proto::TaskRequest, String> {
    decode_frame(frame)
}

/// The response a QUIC stream carried back, framed as [`decode_request_frame`] reads.
pub fn decode_response_frame(frame: &[u8]) -> Result<proto::TaskResponse, String> {
    decode_frame(frame)
}

fn decode_frame<M: Message + Default>(frame: &[u8]) -> Result<M, String> {
    let mut body = frame;
    let len = prost::decode_length_delimiter(&mut body).map_err(|e| e.to_string())?;
    if len != body.len() {
        return Err(format!(
            "frame announces {len} bytes, {} bytes follow",
            body.len()
        ));
    }
    M::decode(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn errors_survive_a_round_trip_through_status_and_kind() {
        let all = [
            TaskError::InvalidInput("x".into()),
            TaskError::UnsupportedTaskType("x".into()),
            TaskError::DeadlineExceeded("x".into()),
            TaskError::Overloaded("x".into()),
            TaskError::Unavailable("x".into()),
        ];
        for e in all {
            let back = status_to_error(&error_to_status(&e));
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
            let r = error_response("t", &e);
            let back = error_from_kind(r.error_kind, r.error_message);
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
        }
        // Cancelled travels in-band as its own kind; as a gRPC status it
        // reads as the deadline (tonic cancels requests whose grpc-timeout
        // expired with CANCELLED).
        let c = TaskError::Cancelled("gone".into());
        let r = error_response("t", &c);
        assert!(matches!(
            error_from_kind(r.error_kind, r.error_message),
            TaskError::Cancelled(_)
        ));
        assert_eq!(error_to_status(&c).code(), Code::Cancelled);
    }

    #[test]
    fn a_runs_timing_reaches_the_response_and_back() {
        let t = RunTiming {
            queued: Duration::from_micros(120),
            inference: Duration::from_micros(38),
        };
        let result = TaskResult {
            task_id: "t".into(),
            outcome: Err(TaskError::Internal("x".into())),
            processed_by: Some(ExecPath::Local),
            transport: None,
            fell_back: false,
            duration: Duration::from_micros(300),
            decision: None,
            timing: Some(t),
        };
        let r = result_to_response(&result);
        assert_eq!((r.queue_nano, r.inference_nano), (120_000, 38_000));
        assert_eq!(timing_from_response(&r), Some(t));
        let r = result_to_response(&TaskResult {
            timing: None,
            ..result
        });
        assert_eq!((r.queue_nano, r.inference_nano), (0, 0));
        assert_eq!(timing_from_response(&r), None);
    }

    #[test]
    fn decisions_carry_their_breakdown_and_jitter() {
        use agent_core::{LocalCost, OffloadCost, Reason, SampleSource};
        let d = Decision {
            policy: "cost-model",
            path: ExecPath::Local,
            reason: Reason::LocalCheaper,
            local: LocalCost {
                queue_ms: 5.0,
                inference_ms: 4.0,
                total_ms: 9.0,
                congestion_ms: 3.0,
            },
            offload: Some(OffloadCost {
                head_ms: 0.0,
                upload_ms: 2.0,
                rtt_ms: 12.0,
                jitter_ms: 3.0,
                jitter_penalty_ms: 9.0,
                cloud_inference_ms: 4.0,
                download_ms: 0.5,
                total_ms: 27.5,
                loss_rate: 0.02,
                p_loss: 0.0396,
                loss_delay_ms: 24.0,
                congestion_ms: 1.5,
            }),
            network_source: Some(SampleSource::ActiveTcpConnect),
            local_outlook: Some(Outlook {
                mean_ms: 9.5,
                p50_ms: 9.0,
                p95_ms: 14.0,
                p_meet: Some(0.75),
                correction_ms: 0.5,
            }),
            offload_outlook: None,
            hedge: true,
            endpoint: 0,
            split: None,
        };
        let p = decision_to_proto(&d);
        let lo = p.local_outlook.unwrap();
        assert_eq!((lo.mean_ms, lo.p95_ms, lo.p_meet), (9.5, 14.0, Some(0.75)));
        assert!(p.offload_outlook.is_none());
        assert!(p.hedged);
        assert_eq!(
            (p.policy.as_str(), p.path.as_str()),
            ("cost-model", "local")
        );
        assert_eq!(p.reason, "local cheaper");
        assert_eq!(p.network_source, "active-tcp");
        assert_eq!((p.jitter_ms, p.jitter_penalty_ms), (3.0, 9.0));
        assert_eq!((p.local_total_ms, p.offload_total_ms), (9.0, 27.5));
        assert_eq!((p.local_congestion_ms, p.offload_congestion_ms), (3.0, 1.5));
        assert_eq!(
            (p.loss_rate, p.p_loss, p.loss_delay_ms),
            (0.02, 0.0396, 24.0)
        );
    }

    #[test]
    fn tasks_survive_a_round_trip_through_the_request() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for task_type in TaskType::ALL {
            let task = Task {
                id: "t1".into(),
                task_type,
                payload: vec![1, 2, 3],
                priority: Priority::High,
                deadline: Some(now + Duration::from_millis(40)),
                created_at: now,
                context: [("k".to_string(), "v".to_string())].into(),
            };
            let back = task_from_request(task_to_request(&task, now, wall), now, wall).unwrap();
            assert_eq!(back.task_type, task.task_type);
            assert_eq!(back.priority, task.priority);
            assert_eq!(back.deadline, task.deadline);
            assert_eq!(
                (back.id, back.payload, back.context),
                (task.id, task.payload, task.context)
            );
        }
        let bad = proto::TaskRequest {
            id: "x".into(),
            r#type: 99,
            ..Default::default()
        };
        assert!(matches!(
            task_from_request(bad, now, wall),
            Err(TaskError::InvalidInput(_))
        ));
    }
}

/// Property tests of the QUIC framing: whatever bytes a peer sends, the
/// decoders answer with a message or an error, never a panic or an
/// allocation beyond the input; what the encoder writes decodes back.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    prop_compose! {
        fn request()(
            id in ".{0,24}",
            r#type in prop_oneof![0..4i32, any::<i32>()],
            payload in prop::collection::vec(any::<u8>(), 0..300),
            priority in prop_oneof![0..5i32, any::<i32>()],
            deadline_unix_nano in any::<i64>(),
            context in prop::collection::hash_map("[a-z]{1,8}", ".{0,12}", 0..4),
        ) -> proto::TaskRequest {
            proto::TaskRequest { id, r#type, payload, priority, deadline_unix_nano, context, features: None }
        }
    }

    prop_compose! {
        fn output()(
            // Classes travel as i32.
            class in any::<i32>().prop_map(i64::from),
            confidence in -1.0f32..2.0,
            label in ".{0,16}",
            boxes in prop::collection::vec(
                (any::<i32>().prop_map(i64::from), ".{0,8}", 0.0f32..1.0, -1e4f32..1e4, -1e4f32..1e4),
                0..4,
            ),
            model in "[a-z_0-9]{0,12}",
            model_version in "[a-z_0-9.]{0,8}",
        ) -> Output {
            Output {
                class,
                confidence,
                label,
                boxes: boxes
                    .into_iter()
                    .map(|(class, label, score, x, y)| Detection {
                        class, label, score, x1: x, y1: y, x2: x + 1.0, y2: y + 1.0,
                    })
                    .collect(),
                model,
                model_version,
            }
        }
    }

    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_decode_or_fail_without_panicking(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..400),
                // A valid frame with bytes flipped: deeper into the decoder.
                (request(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
                    .prop_map(|(r, flips)| {
                        let mut b = encode_frame(&r);
                        for (i, v) in flips {
                            let at = i.index(b.len());
                            b[at] = v;
                        }
                        b
                    }),
            ],
        ) {
            if let Ok(req) = decode_request_frame(&bytes) {
                // What decoded re-encodes to a frame that decodes to the same.
                let again = decode_request_frame(&encode_frame(&req));
                prop_assert_eq!(again.as_ref(), Ok(&req));
                // And the agent's mapping of it either accepts or refuses it as invalid input.
                let now = Instant::now();
                match task_from_request(req.clone(), now, wall()) {
                    Ok(task) => {
                        prop_assert!(!task.id.is_empty());
                        prop_assert_eq!(task.payload, req.payload);
                    }
                    Err(e) => prop_assert!(matches!(e, TaskError::InvalidInput(_)), "{e:?}"),
                }
            }
            if let Ok(resp) = decode_response_frame(&bytes) {
                let again = decode_response_frame(&encode_frame(&resp)).unwrap();
                // Floats may be NaN: compare the encodings instead of the values.
                prop_assert_eq!(encode_frame(&again), encode_frame(&resp));
            }
        }

        #[test]
        fn requests_round_trip_through_a_frame(req in request()) {
            let frame = encode_frame(&req);
            let back = decode_request_frame(&frame).unwrap();
            prop_assert_eq!(&back, &req);
            // The frame is the varint length and the message, nothing else.
            let len = req.encoded_len();
            prop_assert_eq!(frame.len(), prost::length_delimiter_len(len) + len);
        }

        #[test]
        fn responses_round_trip_through_a_frame(id in ".{0,24}", out in output(), fail in any::<bool>()) {
            let resp = if fail {
                error_response(&id, &TaskError::Overloaded(out.label.clone()))
            } else {
                output_response(&id, &out)
            };
            let back = decode_response_frame(&encode_frame(&resp)).unwrap();
            prop_assert_eq!(&back, &resp);
            if !fail {
                prop_assert_eq!(output_from_response(&back), out);
            }
        }

        #[test]
        fn truncated_or_padded_frames_are_refused(
            req in request(),
            cut in any::<prop::sample::Index>(),
            extra in prop::collection::vec(any::<u8>(), 1..16),
        ) {
            let frame = encode_frame(&req);
            let short = &frame[..cut.index(frame.len())];
            prop_assert!(decode_request_frame(short).is_err(), "{} of {} bytes", short.len(), frame.len());
            let mut long = frame.clone();
            long.extend_from_slice(&extra);
            prop_assert!(decode_request_frame(&long).is_err());
        }

        #[test]
        fn huge_announced_lengths_are_refused_without_allocating(
            len in prop_oneof![1u64 << 20..1 << 32, (1u64 << 32)..u64::MAX],
            body in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = Vec::new();
            let mut v = len;
            while v >= 0x80 {
                frame.push((v as u8) | 0x80);
                v >>= 7;
            }
            frame.push(v as u8);
            frame.extend_from_slice(&body);
            prop_assert!(decode_request_frame(&frame).is_err());
            prop_assert!(decode_response_frame(&frame).is_err());
        }
    }

    #[test]
    fn an_empty_stream_and_an_empty_message_differ() {
        assert!(decode_request_frame(&[]).is_err());
        // A zero-length frame is a default message: the mapping refuses it.
        let empty = decode_request_frame(&[0]).unwrap();
        assert_eq!(empty, proto::TaskRequest::default());
        let now = Instant::now();
        assert!(task_from_request(empty, now, wall()).is_err());
    }
}
