//! Who may submit: with `[edge.api_tls]` the task API serves only clients
//! whose certificate its CA signed; without it, the edge refuses to listen
//! beyond loopback.

use agent::edge::Edge;
use agent_net::task_api::connect_with;
use agent_net::tls::{Side, TlsConfig};
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_the_ca_may_submit() {
    let mut cfg = defaults();
    cfg.edge.api_tls = Some(TlsConfig::from_dir(certs(), Side::Server));
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let addr = edge.api_addr.to_string();

    // A certificate from the edge's CA: served.
    let good = client_material(certs(), certs());
    let mut c = connect_with(&addr, Some((&good, "localhost")))
        .await
        .expect("mutual TLS with the CA's client certificate");
    let r = c
        .offload_task(digits_request("with-cert"))
        .await
        .expect("served")
        .into_inner();
    assert!(r.success, "{}", r.error_message);

    // A certificate from another CA: refused (the handshake or the call).
    let foreign = client_material(certs(), other_ca_certs());
    let refused = match connect_with(&addr, Some((&foreign, "localhost"))).await {
        Err(_) => true,
        Ok(mut c) => c.offload_task(digits_request("foreign")).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");

    // No certificate at all: TLS that trusts the edge but shows nothing.
    let ca = std::fs::read(certs().join(agent_net::tls::CA_FILE)).unwrap();
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let refused = match tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(anonymous)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => proto::edge_ai_service_client::EdgeAiServiceClient::new(ch)
            .offload_task(digits_request("anonymous"))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // Plaintext: refused.
    let refused = match agent_net::task_api::connect(&addr).await {
        Err(_) => true,
        Ok(mut c) => c.offload_task(digits_request("plain")).await.is_err(),
    };
    assert!(refused, "a plaintext client was served");

    // The good client still works.
    assert!(c.offload_task(digits_request("again")).await.is_ok());
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unauthenticated_task_api_beyond_loopback() {
    let mut cfg = defaults();
    cfg.edge.tls = TlsConfig::from_dir(certs(), Side::Client);
    cfg.edge.cloud_grpc = dead_address();
    let any = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = match Edge::start(&cfg.edge, Some(any)).await {
        Ok(_) => panic!("an unauthenticated task API started on 0.0.0.0"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("[edge.api_tls]"), "{err}");
    // The metrics endpoint (plain HTTP) follows the same rule.
    cfg.edge.metrics_listen = Some("0.0.0.0:0".into());
    let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match Edge::start(&cfg.edge, Some(local)).await {
        Ok(_) => panic!("a plaintext metrics endpoint started on 0.0.0.0"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("metrics endpoint"), "{err}");
}
