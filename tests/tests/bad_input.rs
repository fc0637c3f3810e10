//! Malformed requests get clear errors from both the edge API and the
//! cloud service, never a panic or a hang.

use proto::edge_ai_service_client::EdgeAiServiceClient;
use proto::TaskRequest;
use tests::*;
use tonic::Code;

fn image_request(id: &str, payload: Vec<u8>) -> TaskRequest {
    TaskRequest {
        id: id.into(),
        r#type: proto::TaskType::ImageClassification as i32,
        payload,
        priority: proto::Priority::Medium as i32,
        deadline_unix_nano: 0,
        context: Default::default(),
        features: None,
    }
}

async fn expect_code(
    c: &mut EdgeAiServiceClient<tonic::transport::Channel>,
    req: TaskRequest,
    code: Code,
    needle: &str,
) {
    let err = c.offload_task(req).await.expect_err("must be refused");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().contains(needle),
        "{:?} lacks {needle:?}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_service_refuses_bad_input_clearly() {
    let mut cfg = defaults();
    cfg.cloud.max_payload_bytes = 4096;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let mut c = cloud_client(&cloud).await;
    expect_code(
        &mut c,
        image_request("a", vec![0; 10]),
        Code::InvalidArgument,
        "expects a 8x8",
    )
    .await;
    expect_code(
        &mut c,
        image_request("b", vec![0; 5000]),
        Code::InvalidArgument,
        "exceeds the limit",
    )
    .await;
    expect_code(
        &mut c,
        image_request("", vec![0; 64]),
        Code::InvalidArgument,
        "id is empty",
    )
    .await;
    let mut unknown = image_request("c", vec![0; 64]);
    unknown.r#type = 42;
    expect_code(&mut c, unknown, Code::Unimplemented, "unknown task type").await;
    let mut nlp = image_request("d", vec![0; 64]);
    nlp.r#type = proto::TaskType::NlpAnalysis as i32;
    expect_code(&mut c, nlp, Code::Unimplemented, "no cloud model").await;
    let mut expired = image_request("e", vec![0; 64]);
    expired.deadline_unix_nano = 1_000_000_000; // 1970
    expect_code(&mut c, expired, Code::DeadlineExceeded, "deadline").await;
    // And a good one still works afterwards.
    let ok = c
        .offload_task(image_request("f", test_set()[0].pixels.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.success && ok.processed_by == "cloud" && ok.inference_nano > 0);
    assert_eq!(ok.model_name, "digits_cloud");
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_api_refuses_bad_input_clearly() {
    let cfg = defaults();
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let mut c = client(&edge).await;
    expect_code(
        &mut c,
        image_request("a", vec![1, 2, 3]),
        Code::InvalidArgument,
        "expects a 8x8",
    )
    .await;
    let mut unknown = image_request("b", vec![0; 64]);
    unknown.r#type = 0;
    expect_code(&mut c, unknown, Code::InvalidArgument, "task type").await;
    // No local model and no cloud: an explicit failed result.
    let mut nlp = image_request("c", vec![0; 64]);
    nlp.r#type = proto::TaskType::NlpAnalysis as i32;
    let r = c.offload_task(nlp).await.unwrap().into_inner();
    assert!(!r.success);
    assert_eq!(
        r.error_kind,
        proto::ErrorKind::Unavailable as i32,
        "{}",
        r.error_message
    );
    // A deadline nobody can meet fails early with the breakdown.
    let mut tight = image_request("d", test_set()[0].pixels.clone());
    tight.deadline_unix_nano = agent_core::deadline_to_unix_nanos(
        Some(std::time::Instant::now() + std::time::Duration::from_micros(1)),
        std::time::Instant::now(),
        std::time::SystemTime::now(),
    );
    let r = c.offload_task(tight).await.unwrap().into_inner();
    assert!(!r.success);
    assert_eq!(
        r.error_kind,
        proto::ErrorKind::DeadlineExceeded as i32,
        "{}",
        r.error_message
    );
    edge.shutdown().await.unwrap();
}
