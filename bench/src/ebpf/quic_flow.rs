//! QUIC traffic for the check: a real quinn connection with mutual TLS
//! (certificates from the agent's own `gen-certs`) carrying a continuous stream of datagrams
//! that the server echoes at once. The client stamps each datagram and
//! times its echo: the application's own RTT of the very packets whose
//! spin bit the probe reads.

use agent_net::tls::{Side, TlsConfig};
use anyhow::{Context, Result};
use bytes::Bytes;
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Server name the client asks for (every generated server certificate has it).
const SERVER_NAME: &str = "localhost";

/// Server and client configurations with a fresh development CA in `dir`.
pub fn configs(dir: &Path) -> Result<(ServerConfig, ClientConfig)> {
    agent_net::tls::gen_certs(dir, &[])?;
    let load = |side| {
        TlsConfig::from_dir(dir, side)
            .load(side)?
            .context("TLS material")
    };
    let (server_tls, client_tls) = (load(Side::Server)?, load(Side::Client)?);
    // Spin bit allowed (quinn's default, as on the agent's offload path).
    let mut transport = quinn::TransportConfig::default();
    transport.allow_spin(true);
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10))?));
    let transport = Arc::new(transport);
    let mut server = ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls.rustls_server()?)?,
    ));
    server.transport_config(transport.clone());
    let mut client = ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls.rustls_client()?)?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

/// A quinn endpoint on a UDP socket already bound (in whichever network
/// namespace it was created in). Call inside the tokio runtime.
pub fn endpoint(sock: UdpSocket, server: Option<ServerConfig>) -> Result<Endpoint> {
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    Ok(Endpoint::new(
        EndpointConfig::default(),
        server,
        sock,
        runtime,
    )?)
}

/// Echoes every datagram on every connection until the endpoint closes.
pub fn serve_echo(endpoint: Endpoint) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok(d) = conn.read_datagram().await {
                    let _ = conn.send_datagram(d);
                }
            });
        }
    })
}

pub async fn connect(
    client: &Endpoint,
    cfg: ClientConfig,
    server: SocketAddr,
) -> Result<Connection> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect_with(cfg, server, SERVER_NAME)?,
    )
    .await
    .context("QUIC handshake timed out")??;
    Ok(conn)
}

/// A running echo flow: one datagram every `interval`, each stamped with
/// its send time and timed when its echo comes back.
pub struct Echo {
    conn: Connection,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Result<u64>>,
    receiver: JoinHandle<()>,
    /// (send time, RTT in ms) of every echoed datagram.
    echoes: Arc<Mutex<Vec<(Instant, f64)>>>,
}

#[derive(Debug, Clone, Default)]
pub struct EchoTotals {
    pub sent: u64,
    pub echoed: u64,
    /// quinn's own smoothed RTT at the end.
    pub quinn_rtt_ms: f64,
}

impl Echo {
    pub fn start(conn: Connection, interval: Duration) -> Echo {
        let base = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(Mutex::new(Vec::new()));
        let sender = {
            let (conn, stop) = (conn.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0u64;
                let mut payload = [0u8; 200];
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    payload[..8].copy_from_slice(&sent.to_be_bytes());
                    payload[8..16]
                        .copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                    conn.send_datagram(Bytes::copy_from_slice(&payload))
                        .map_err(|e| anyhow::anyhow!("sending a datagram: {e}"))?;
                    sent += 1;
                }
                Ok(sent)
            })
        };
        let receiver = {
            let (conn, echoes) = (conn.clone(), Arc::clone(&echoes));
            tokio::spawn(async move {
                while let Ok(d) = conn.read_datagram().await {
                    if d.len() < 16 {
                        continue;
                    }
                    let sent_ns = u64::from_be_bytes(d[8..16].try_into().expect("8 bytes"));
                    let rtt = base.elapsed().saturating_sub(Duration::from_nanos(sent_ns));
                    let sent_at = base + Duration::from_nanos(sent_ns);
                    echoes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((sent_at, rtt.as_secs_f64() * 1e3));
                }
            })
        };
        Echo {
            conn,
            stop,
            sender,
            receiver,
            echoes,
        }
    }

    /// RTTs of the datagrams sent within `[from, to]` (echoed so far).
    pub fn rtts_sent_between(&self, from: Instant, to: Instant) -> Vec<f64> {
        self.echoes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, rtt)| *rtt)
            .collect()
    }

    /// Stops sending, waits `drain` for echoes still on their way, closes.
    pub async fn stop(self, drain: Duration) -> Result<EchoTotals> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.await??;
        tokio::time::sleep(drain).await;
        let quinn_rtt_ms = self.conn.rtt().as_secs_f64() * 1e3;
        self.conn.close(0u32.into(), b"done");
        let _ = self.receiver.await;
        let echoed = self.echoes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        Ok(EchoTotals {
            sent,
            echoed,
            quinn_rtt_ms,
        })
    }
}
