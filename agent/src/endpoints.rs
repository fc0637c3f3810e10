//! The edge's offload endpoints, each with its own offload stack (circuit
//! breakers, retries, rate limit) over its transport: our cloud service
//! (QUIC, gRPC fallback), a KServe V2 server, or a peer gateway's task API.

use crate::config::{EdgeConfig, EndpointConfig, EndpointKind};
use agent_core::TaskType;
use agent_net::tls::Side;
use agent_net::{build_layered_stack, build_stack, resolve, CloudEndpoints, OffloadStack};
use anyhow::Context;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// One endpoint, ready to offload to.
pub struct Endpoint {
    pub cfg: EndpointConfig,
    /// Its gRPC address, resolved (the active probe connects there).
    pub addr: SocketAddr,
    pub stack: OffloadStack,
    /// The task types it serves; `None`: every type.
    pub serves: Option<HashSet<TaskType>>,
}

/// Builds every endpoint of `cfg` (see [`EdgeConfig::endpoint_list`]).
pub async fn build(cfg: &EdgeConfig) -> anyhow::Result<Vec<Endpoint>> {
    let mut out = Vec::new();
    for ep in cfg.endpoint_list()? {
        let built = build_one(cfg, &ep)
            .await
            .with_context(|| format!("offload endpoint {:?} ({})", ep.name, ep.address))?;
        out.push(built);
    }
    Ok(out)
}

async fn build_one(cfg: &EdgeConfig, ep: &EndpointConfig) -> anyhow::Result<Endpoint> {
    let addr = resolve(&ep.address).await?;
    let tls = ep.tls.as_ref().unwrap_or(&cfg.tls).load(Side::Client)?;
    let server_name = ep
        .server_name
        .clone()
        .unwrap_or_else(|| cfg.cloud_server_name.clone());
    let (stack, serves) = match ep.kind {
        EndpointKind::Agent | EndpointKind::Peer => {
            let stack = build_stack(
                &cfg.offload,
                &CloudEndpoints {
                    grpc: ep.address.clone(),
                    quic: ep.quic.clone(),
                    server_name,
                },
                tls.as_ref(),
            )
            .await?;
            (stack, None)
        }
        EndpointKind::V2 => anyhow::bail!("V2 endpoints: pending"),
    };
    Ok(Endpoint {
        cfg: ep.clone(),
        addr,
        stack,
        serves,
    })
}
