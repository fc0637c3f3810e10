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
        EndpointKind::V2 => {
            let o = &cfg.offload;
            let mut models = std::collections::HashMap::new();
            for (t, name) in &ep.models {
                let spec = cfg.models.get(t).cloned().with_context(|| {
                    format!(
                        "task type {} has no edge model: the V2 client prepares inputs and reads \
                         outputs with the edge's model description",
                        t.as_str()
                    )
                })?;
                models.insert(
                    *t,
                    crate::v2::V2Model {
                        name: name.clone(),
                        version: String::new(),
                        spec,
                    },
                );
            }
            let serves = models.keys().copied().collect();
            let client = crate::v2::V2Offloader::new(crate::v2::V2Target {
                address: ep.address.clone(),
                tls: tls.as_ref().map(|t| t.grpc_client(&server_name)),
                connect_timeout: Duration::from_millis(o.connect_timeout_ms),
                keep_alive: o.grpc_keep_alive(),
                max_message: o.max_message_bytes,
                models,
            })?;
            (
                build_layered_stack(o, std::sync::Arc::new(client), "v2"),
                Some(serves),
            )
        }
    };
    Ok(Endpoint {
        cfg: ep.clone(),
        addr,
        stack,
        serves,
    })
}
