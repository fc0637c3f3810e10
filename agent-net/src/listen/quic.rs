//! QUIC listener of the cloud service: mutual TLS, ALPN `edge-offload/1`,
//! one bidirectional stream per task (length-delimited prost messages),
//! errors in-band as a failed `TaskResponse`. Streams per connection are
//! limited by the transport (`max_concurrent_bidi_streams`), request size
//! by the read limit.

use super::{Handler, SHUTDOWN_GRACE};
use crate::tls::TlsMaterial;
use crate::wire::{decode_request_frame, encode_frame, error_response};
use agent_core::TaskError;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Room for the payload plus the request's other fields.
const ENVELOPE: usize = 64 * 1024;

/// Binds the QUIC endpoint.
pub fn endpoint(
    addr: SocketAddr,
    tls: &TlsMaterial,
    max_streams: u32,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.rustls_server()?)
        .context("TLS configuration unusable for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(crate::quic_settings::transport_config(
        None,
        Duration::from_secs(30),
        max_streams,
        crate::quic_settings::congestion("cubic")?,
    )));
    crate::quic_settings::endpoint(addr, Some(server))
        .with_context(|| format!("binding QUIC on {addr}"))
}

/// Serves until `stop` is cancelled, then lets in-flight streams finish.
pub async fn serve(
    handler: Arc<dyn Handler>,
    endpoint: quinn::Endpoint,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    conns.spawn(connection(handler.clone(), incoming, stop.clone()));
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"shutting down");
    // Lets the close reach the peers; bounded, because a connection left
    // half-open by a client that gave up on its handshake only goes away
    // with the idle timeout.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
    Ok(())
}

async fn connection(handler: Arc<dyn Handler>, incoming: quinn::Incoming, stop: CancellationToken) {
    let remote = incoming.remote_address();
    // A handshake that never completes must not hold up shutdown.
    let handshake = tokio::select! {
        r = incoming => r,
        _ = stop.cancelled() => return,
    };
    let conn = match handshake {
        Ok(c) => c,
        Err(e) => {
            // Among others: a client certificate from another CA.
            tracing::info!(%remote, error = %e, "QUIC handshake refused");
            return;
        }
    };
    let max_len = handler.max_payload_bytes() + ENVELOPE;
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(stream(handler.clone(), conn.clone(), send, recv, max_len));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "QUIC connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    // In-flight tasks get a grace period; a stream whose client vanished
    // mid-request would otherwise wait for the idle timeout.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        streams.abort_all();
    }
    conn.close(0u32.into(), b"done");
}

async fn stream(
    handler: Arc<dyn Handler>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max_len: usize,
) {
    let response = match read_request(&conn, &mut recv, max_len).await {
        Ok((buf, train)) => match decode_request_frame(&buf) {
            Ok(req) => {
                let id = req.id.clone();
                // The client stopping its stream (cancelled, timed out)
                // drops the work here too.
                let stopped = send.stopped();
                let mut response = tokio::select! {
                    r = handler.handle_via(agent_core::Transport::Quic, req) => r.unwrap_or_else(|e| error_response(&id, &e)),
                    _ = stopped => return,
                };
                if let Some(train) = train {
                    response.upload_train_bytes = i64::try_from(train.bytes).unwrap_or(i64::MAX);
                    response.upload_train_nano =
                        i64::try_from(train.time.as_nanos()).unwrap_or(i64::MAX);
                }
                response
            }
            Err(e) => error_response(
                "",
                &TaskError::InvalidInput(format!("malformed request: {e}")),
            ),
        },
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(0u32.into());
            error_response(
                "",
                &TaskError::InvalidInput(format!(
                    "request exceeds the limit of {} bytes (payload limit {} bytes)",
                    max_len,
                    max_len - ENVELOPE
                )),
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "QUIC stream broken before the request arrived");
            return;
        }
    };
    if send.write_all(&encode_frame(&response)).await.is_ok() {
        let _ = send.finish();
        // Keep the stream until the peer has the data (or is gone), so a
        // closing connection does not cut the answer off.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

/// How a request arrived: what the connection received between its first
/// chunk and the one that brought its furthest byte.
#[derive(Debug, Clone, Copy)]
struct Train {
    bytes: u64,
    time: Duration,
}

/// Reads the whole request (as `read_to_end` would), timing its train.
/// Chunks are taken as they arrive, out of order: a retransmission that
/// fills a hole behind the furthest byte is the loss's delay, which the
/// edge prices from the loss rate, not the link's rate, and does not
/// lengthen the train.
async fn read_request(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    max_len: usize,
) -> Result<(Vec<u8>, Option<Train>), quinn::ReadToEndError> {
    let mut buf = Vec::new();
    let mut first: Option<(Instant, u64)> = None;
    let mut last = None;
    while let Some(chunk) = recv.read_chunk(usize::MAX, false).await? {
        let start = usize::try_from(chunk.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(chunk.bytes.len());
        if end > max_len {
            return Err(quinn::ReadToEndError::TooLong);
        }
        // Counted across the connection, so uploads that share the link
        // (streams interleave) do not read as a slow one.
        let mark = || (Instant::now(), conn.stats().udp_rx.bytes);
        let furthest = end > buf.len();
        if first.is_none() {
            first = Some(mark());
        } else if furthest {
            last = Some(mark());
        }
        if furthest {
            buf.resize(end, 0);
        }
        buf[start..end].copy_from_slice(&chunk.bytes);
    }
    let train = first.zip(last).map(|((t0, b0), (t1, b1))| Train {
        bytes: b1.saturating_sub(b0),
        time: t1.saturating_duration_since(t0),
    });
    Ok((buf, train))
}
