//! Who may submit: with `[edge.api_tls]` the task API serves only clients
//! whose certificate its CA signed; without it, the edge refuses to listen
//! beyond loopback; on a Unix socket, whoever may write the socket file.

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

/// `edge.listen = "unix:/path"`: the API serves over the socket (to the
/// library client and to `agent submit`), the file has `api_socket_mode`,
/// a stale file is replaced, a live one is not, and shutdown removes it.
/// Needs `cargo build --release -p agent` first (for `agent submit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_task_api_serves_and_is_removed_at_shutdown() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("edge-offload-test-unix-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("edge.sock");
    // A socket file left by an agent that is gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let mut cfg = defaults();
    cfg.edge.listen = format!("unix:{}", sock.display());
    cfg.edge.api_socket_mode = 0o600;
    cfg.edge.cloud_grpc = dead_address();
    cfg.edge.cloud_quic = String::new();
    cfg.edge.tls = TlsConfig::from_dir(certs(), Side::Client);
    cfg.edge.probe.passive = false;
    let edge = Edge::start(&cfg.edge, None)
        .await
        .expect("an edge on a Unix socket starts without TLS");
    assert_eq!(edge.api_addr.to_string(), cfg.edge.listen);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);

    // The library client.
    let sample = &test_set()[0];
    let mut c = agent_net::task_api::connect(&cfg.edge.listen)
        .await
        .expect("connecting over the Unix socket");
    let r = c
        .offload_task(digits_request("over-unix"))
        .await
        .expect("served over the Unix socket")
        .into_inner();
    assert!(r.success, "{}", r.error_message);
    assert_eq!(r.predicted_class, i32::from(sample.label));

    // `agent submit --edge unix:/path`.
    let payload = dir.path().join("digit.bin");
    std::fs::write(&payload, &sample.pixels).unwrap();
    let out = tokio::process::Command::new(agent_binary())
        .args(["submit", "--edge", &cfg.edge.listen, "--task-type"])
        .arg("image_classification")
        .arg(&payload)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent submit: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("class={} ", sample.label)) && !stdout.contains("failed"),
        "{stdout}"
    );

    // While it serves, a second edge does not take the socket over.
    let err = match Edge::start(&cfg.edge, None).await {
        Ok(_) => panic!("a second edge replaced a live socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("already running"), "{err}");
    assert!(sock.exists());

    edge.shutdown().await.unwrap();
    assert!(!sock.exists(), "the socket file outlived the edge");
}

/// Sockets of this process connected from or to `local` (by file
/// descriptor), with whether TCP_NODELAY is set on each.
fn nodelay_of_connections(local: std::net::SocketAddr) -> Vec<bool> {
    use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockaddrStorage};
    use std::os::fd::BorrowedFd;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let name = getsockname::<SockaddrStorage>(fd).ok();
        let on_api = name
            .and_then(|n| n.as_sockaddr_in().map(|a| std::net::SocketAddr::from(*a)))
            .is_some_and(|a| a == local);
        // The listener has no peer; accepted connections do.
        if on_api && getpeername::<SockaddrStorage>(fd).is_ok() {
            // SAFETY: the descriptor stays open for this call (the edge's
            // connection is alive while its client is).
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            found.push(getsockopt(&b, sockopt::TcpNoDelay).unwrap());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_api_turns_nagle_off_on_its_connections() {
    let cfg = defaults();
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    let api: std::net::SocketAddr = edge.api_addr.to_string().parse().unwrap();
    let mut c = client(&edge).await;
    let r = c
        .offload_task(digits_request("nodelay"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{r:?}");
    // The edge's end of the connection: accepted with Nagle off.
    let sockets = nodelay_of_connections(api);
    assert!(
        !sockets.is_empty(),
        "the edge's accepted connection is found"
    );
    assert!(
        sockets.iter().all(|&on| on),
        "TCP_NODELAY on every accepted connection: {sockets:?}"
    );
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}
