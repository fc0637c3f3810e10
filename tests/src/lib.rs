//! Helpers for the integration tests in tests/tests/: real cloud service,
//! real edge agent, real models, real sockets on loopback.

use agent::config::{CloudConfig, Config, EdgeConfig};
use agent::dataset::Sample;
use agent::edge::Edge;
use agent::server::CloudService;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use tonic::transport::Channel;

pub fn defaults() -> Config {
    Config::load(None).expect("default config")
}

pub fn test_set() -> Vec<Sample> {
    agent::dataset::load_default().expect("models/digits_test.bin")
}

pub async fn start_cloud(mut cfg: CloudConfig) -> CloudService {
    cfg.listen_grpc = "127.0.0.1:0".into();
    CloudService::start(&cfg).await.expect("cloud service starts")
}

pub async fn start_edge(mut cfg: EdgeConfig, cloud_grpc: String) -> Edge {
    cfg.cloud_grpc = cloud_grpc;
    cfg.probe.interval_ms = 50;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Edge::start(&cfg, Some(listener)).await.expect("edge starts")
}

/// An address on loopback where nothing listens.
pub fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

pub async fn client(edge: &Edge) -> EdgeAiServiceClient<Channel> {
    agent::submit::connect(&edge.api_addr.to_string()).await.unwrap()
}

pub async fn wait_reachable(edge: &Edge) {
    for _ in 0..200 {
        if edge.manager.network_status().reachable {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("cloud never became reachable");
}
