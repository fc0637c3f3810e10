//! QUIC (quinn) offload client: one connection to the cloud, reused, and
//! one bidirectional stream per task carrying a length-delimited
//! prost-encoded `TaskRequest`, answered by a length-delimited
//! `TaskResponse` (errors in-band: `success = false` with `error_kind`).

use super::{time_left, OffloadError, OffloadReply, OffloadRequest, Offloader, PacketCounts};
use crate::quic_settings::{congestion, transport_config};
use crate::tls::TlsMaterial;
use agent_core::Transport;
use anyhow::Context;
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUIC: &str = "quic";

#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    /// False while a 0-RTT connection's handshake is still under way: a
    /// failure then means no connection (UDP blocked, server gone), not a
    /// broken stream.
    established: Arc<AtomicBool>,
}

enum Conn {
    None,
    Up(Live),
    /// The last attempt failed at this time: callers fail fast for a
    /// connect timeout instead of each waiting out a handshake of their own.
    Failed(Instant, String),
}

/// What the QUIC client needs (built from `[edge.offload]` by the stack).
#[derive(Debug, Clone)]
pub struct QuicClientConfig {
    /// Name the server's certificate must carry (SNI and verification).
    pub server_name: String,
    /// Handshake limit; also how long a failed connect makes other tasks
    /// fail fast before one tries again.
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
    /// A silent connection is declared dead after this.
    pub idle_timeout: Duration,
    /// bbr, cubic or newreno.
    pub congestion: String,
    /// Largest message either way.
    pub max_message: usize,
}

pub struct QuicOffloader {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    connect_timeout: Duration,
    max_message: usize,
    conn: tokio::sync::Mutex<Conn>,
}

impl QuicOffloader {
    pub fn new(
        addr: SocketAddr,
        tls: &TlsMaterial,
        cfg: QuicClientConfig,
    ) -> anyhow::Result<QuicOffloader> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.rustls_client()?)
            .context("TLS configuration unusable for QUIC")?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport_config(
            Some(cfg.keep_alive),
            cfg.idle_timeout,
            0,
            congestion(&cfg.congestion)?,
        )));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint =
            crate::quic_settings::endpoint(bind, None).context("opening the QUIC client socket")?;
        endpoint.set_default_client_config(client);
        Ok(QuicOffloader {
            endpoint,
            addr,
            server_name: cfg.server_name,
            connect_timeout: cfg.connect_timeout,
            max_message: cfg.max_message,
            conn: tokio::sync::Mutex::new(Conn::None),
        })
    }

    /// The live connection, or a new one. A probe (`probe`) ignores a
    /// recent failure and waits for the full handshake.
    async fn connection(&self, probe: bool) -> Result<Live, OffloadError> {
        let mut conn = self.conn.lock().await;
        match &*conn {
            Conn::Up(c)
                if c.conn.close_reason().is_none()
                    && (!probe || c.established.load(Ordering::SeqCst)) =>
            {
                return Ok(c.clone())
            }
            Conn::Failed(at, msg) if !probe && at.elapsed() < self.connect_timeout => {
                return Err(connect_error(msg.clone()));
            }
            _ => {}
        }
        let r = self.connect(!probe).await;
        *conn = match &r {
            Ok(c) => Conn::Up(c.clone()),
            Err(e) => Conn::Failed(Instant::now(), e.clone()),
        };
        r.map_err(connect_error)
    }

    async fn connect(&self, early: bool) -> Result<Live, String> {
        let connecting = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|e| e.to_string())?;
        let connecting = if early {
            match connecting.into_0rtt() {
                // A resumed session: requests go out with the handshake. If
                // the server refuses the early data, the exchange is redone.
                Ok((conn, accepted)) => {
                    let established = Arc::new(AtomicBool::new(false));
                    let (flag, watched, timeout) =
                        (established.clone(), conn.clone(), self.connect_timeout);
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, accepted).await {
                            Ok(_) if watched.close_reason().is_none() => {
                                flag.store(true, Ordering::SeqCst)
                            }
                            Ok(_) => {}
                            Err(_) => watched.close(0u32.into(), b"handshake timeout"),
                        }
                    });
                    return Ok(Live { conn, established });
                }
                Err(connecting) => connecting,
            }
        } else {
            connecting
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(Live {
                conn,
                established: Arc::new(AtomicBool::new(true)),
            }),
            Ok(Err(e)) => Err(format!("handshake with {} failed: {e}", self.addr)),
            Err(_) => Err(format!(
                "no handshake with {} within {:?} (UDP blocked?)",
                self.addr, self.connect_timeout
            )),
        }
    }

    async fn exchange(
        &self,
        conn: &quinn::Connection,
        request: &[u8],
    ) -> Result<Vec<u8>, StreamError> {
        let (send, mut recv) = conn.open_bi().await.map_err(StreamError::from_conn)?;
        let mut send = Abandon(Some(send));
        match send.stream().write_all(request).await {
            Ok(()) => send
                .stream()
                .finish()
                .map_err(|e| StreamError::Broken(e.to_string()))?,
            // The server stopped reading (request too large): its answer says why.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(StreamError::from_write(e)),
        }
        let answer = recv
            .read_to_end(self.max_message)
            .await
            .map_err(|e| match e {
                quinn::ReadToEndError::Read(quinn::ReadError::ZeroRttRejected) => {
                    StreamError::ZeroRttRejected
                }
                e => StreamError::Broken(e.to_string()),
            })?;
        // Answered: the request was delivered, nothing is left to abandon.
        send.keep();
        Ok(answer)
    }
}

/// A request's send stream, reset when dropped unanswered (the exchange
/// timed out, was cancelled, or its answer broke). quinn finishes a dropped
/// stream: the rest of a request nobody waits for any more would still be
/// sent, and its losses retransmitted, ahead of every later upload on a
/// narrow uplink; and the cloud would run it. A reset drops what is unsent,
/// retransmits nothing, and tells the cloud to stop reading.
struct Abandon(Option<quinn::SendStream>);

impl Abandon {
    fn stream(&mut self) -> &mut quinn::SendStream {
        self.0.as_mut().expect("a stream until kept")
    }

    /// The exchange completed: the stream ends normally.
    fn keep(mut self) {
        self.0.take();
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(stream) = self.0.as_mut() {
            // Already reset, or wholly acknowledged: nothing left to drop.
            let _ = stream.reset(ABANDONED);
        }
    }
}

/// The stream error code of a request the client gave up on.
const ABANDONED: quinn::VarInt = quinn::VarInt::from_u32(1);

impl Drop for QuicOffloader {
    /// Tells the cloud at once instead of leaving it to the idle timeout.
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"client closed");
    }
}

fn connect_error(message: String) -> OffloadError {
    OffloadError::Connect {
        transport: QUIC,
        message,
    }
}

enum StreamError {
    ZeroRttRejected,
    Broken(String),
}

impl StreamError {
    fn from_conn(e: quinn::ConnectionError) -> StreamError {
        StreamError::Broken(e.to_string())
    }

    fn from_write(e: quinn::WriteError) -> StreamError {
        match e {
            quinn::WriteError::ZeroRttRejected => StreamError::ZeroRttRejected,
            e => StreamError::Broken(e.to_string()),
        }
    }
}

#[async_trait]
impl Offloader for QuicOffloader {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let left = time_left(req.deadline)?;
        let request = crate::wire::encode_frame(&req.request);
        let bytes_up = request.len();
        let started = Instant::now();
        let attempt = async {
            let live = self.connection(false).await?;
            let mut result = self.exchange(&live.conn, &request).await;
            if matches!(result, Err(StreamError::ZeroRttRejected)) {
                // The handshake is complete now; the same connection carries it.
                result = self.exchange(&live.conn, &request).await;
            }
            let packets = live.conn.stats().path;
            let packets = PacketCounts {
                connection: live.conn.stable_id() as u64,
                sent: packets.sent_packets,
                lost: packets.lost_packets,
            };
            result.map(|bytes| (bytes, packets)).map_err(|e| {
                let message = match e {
                    StreamError::ZeroRttRejected => "0-RTT rejected twice".into(),
                    StreamError::Broken(m) => m,
                };
                if live.established.load(Ordering::SeqCst) {
                    OffloadError::Transport {
                        transport: QUIC,
                        message,
                    }
                } else {
                    connect_error(message)
                }
            })
        };
        // On timeout the exchange is dropped: its request stream is reset (`Abandon`).
        let (bytes, packets) = match left {
            Some(left) => tokio::time::timeout(left, attempt)
                .await
                .map_err(|_| OffloadError::Timeout)??,
            None => attempt.await?,
        };
        let elapsed = started.elapsed();
        let response =
            crate::wire::decode_response_frame(&bytes).map_err(|e| OffloadError::Transport {
                transport: QUIC,
                message: format!("malformed response: {e}"),
            })?;
        if !response.success {
            return Err(OffloadError::Rejected(crate::wire::error_from_kind(
                response.error_kind,
                response.error_message,
            )));
        }
        Ok(OffloadReply {
            response,
            transport: Transport::Quic,
            elapsed,
            bytes_up,
            bytes_down: bytes.len(),
            packets: Some(packets),
        })
    }

    async fn ready(&self) -> Result<(), OffloadError> {
        self.connection(true).await.map(|_| ())
    }
}
