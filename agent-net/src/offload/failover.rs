//! QUIC first, gRPC when QUIC is blocked or failing.
//!
//! [`FailoverState`] is the pure state machine (time passed in):
//! - on QUIC, a failed connection (handshake failure, blocked UDP, open
//!   circuit) switches to gRPC at once; stream errors switch after
//!   `stream_errors` in a row;
//! - on gRPC, QUIC is probed again (a handshake, no task) after a backoff
//!   that doubles with every failed probe up to `reprobe_max`; a good probe
//!   switches back.
//!
//! [`Failover`] drives it: a task whose QUIC attempt fails goes over gRPC
//! right away, so switching loses no task.

use super::{OffloadError, OffloadReply, OffloadRequest, Offloader};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailoverConfig {
    /// Consecutive QUIC stream errors that switch to gRPC.
    pub stream_errors: u32,
    pub reprobe_min: Duration,
    pub reprobe_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Quic,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicFailure {
    /// No connection: handshake failed or timed out, circuit open.
    Connect,
    /// A stream broke on an established connection.
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quic {
        stream_errors: u32,
    },
    Grpc {
        probe_at: Instant,
        backoff: Duration,
        probing: bool,
    },
}

#[derive(Debug, Clone)]
pub struct FailoverState {
    cfg: FailoverConfig,
    mode: Mode,
}

impl FailoverState {
    pub fn new(cfg: FailoverConfig) -> FailoverState {
        FailoverState {
            cfg,
            mode: Mode::Quic { stream_errors: 0 },
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn route(&self) -> Route {
        match self.mode {
            Mode::Quic { .. } => Route::Quic,
            Mode::Grpc { .. } => Route::Grpc,
        }
    }

    /// True (once) when a QUIC probe should start at `now`.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        match &mut self.mode {
            Mode::Grpc {
                probe_at, probing, ..
            } if !*probing && now >= *probe_at => {
                *probing = true;
                true
            }
            _ => false,
        }
    }

    pub fn on_quic_ok(&mut self) {
        if let Mode::Quic { stream_errors } = &mut self.mode {
            *stream_errors = 0;
        }
    }

    /// Returns true when this failure switched to gRPC.
    pub fn on_quic_failure(&mut self, now: Instant, kind: QuicFailure) -> bool {
        let Mode::Quic { stream_errors } = &mut self.mode else {
            return false;
        };
        *stream_errors += 1;
        let switch =
            kind == QuicFailure::Connect || *stream_errors >= self.cfg.stream_errors.max(1);
        if switch {
            self.mode = Mode::Grpc {
                probe_at: now + self.cfg.reprobe_min,
                backoff: self.cfg.reprobe_min,
                probing: false,
            };
        }
        switch
    }

    /// Returns true when the probe switched back to QUIC.
    pub fn on_probe(&mut self, now: Instant, ok: bool) -> bool {
        let Mode::Grpc { backoff, .. } = self.mode else {
            return false;
        };
        if ok {
            self.mode = Mode::Quic { stream_errors: 0 };
            return true;
        }
        let next = (backoff * 2).min(self.cfg.reprobe_max);
        self.mode = Mode::Grpc {
            probe_at: now + next,
            backoff: next,
            probing: false,
        };
        false
    }
}

/// Counters for logs and statistics.
#[derive(Debug, Default)]
pub struct FailoverStats {
    pub to_grpc: AtomicU64,
    pub to_quic: AtomicU64,
    pub probes: AtomicU64,
}

pub struct Failover {
    quic: Arc<dyn Offloader>,
    grpc: Arc<dyn Offloader>,
    state: Arc<Mutex<FailoverState>>,
    stats: Arc<FailoverStats>,
}

impl Failover {
    pub fn new(
        quic: Arc<dyn Offloader>,
        grpc: Arc<dyn Offloader>,
        cfg: FailoverConfig,
    ) -> Failover {
        Failover {
            quic,
            grpc,
            state: Arc::new(Mutex::new(FailoverState::new(cfg))),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<FailoverStats> {
        self.stats.clone()
    }

    pub fn route(&self) -> Route {
        self.state.lock().expect("failover lock").route()
    }

    fn start_probe(&self) {
        let (quic, state, stats) = (self.quic.clone(), self.state.clone(), self.stats.clone());
        stats.probes.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let r = quic.ready().await;
            let back = state
                .lock()
                .expect("failover lock")
                .on_probe(Instant::now(), r.is_ok());
            match r {
                Ok(()) if back => {
                    stats.to_quic.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("QUIC reachable again: offloads go over QUIC");
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "QUIC probe failed; staying on gRPC"),
            }
        });
    }
}

#[async_trait]
impl Offloader for Failover {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let (route, probe) = {
            let mut st = self.state.lock().expect("failover lock");
            let probe = st.take_probe(Instant::now());
            (st.route(), probe)
        };
        if probe {
            self.start_probe();
        }
        if route == Route::Quic {
            let kind = match self.quic.offload(req).await {
                Err(OffloadError::Connect { .. } | OffloadError::CircuitOpen { .. }) => {
                    QuicFailure::Connect
                }
                Err(OffloadError::Transport { .. }) => QuicFailure::Stream,
                // Answered (or refused) over QUIC, or out of time: done.
                other => {
                    if other.is_ok() {
                        self.state.lock().expect("failover lock").on_quic_ok();
                    }
                    return other;
                }
            };
            let switched = self
                .state
                .lock()
                .expect("failover lock")
                .on_quic_failure(Instant::now(), kind);
            if switched {
                self.stats.to_grpc.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(failure = ?kind, "QUIC failing: offloads go over gRPC, QUIC probed again later");
            }
        }
        self.grpc.offload(req).await
    }

    async fn ready(&self) -> Result<(), OffloadError> {
        match self.route() {
            Route::Quic => self.quic.ready().await,
            Route::Grpc => self.grpc.ready().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::Transport;
    use std::sync::atomic::AtomicBool;

    /// A transport that answers, or fails with a connect error while `down`.
    struct Fake {
        transport: Transport,
        down: AtomicBool,
        calls: AtomicU64,
    }

    impl Fake {
        fn new(transport: Transport, down: bool) -> Arc<Fake> {
            Arc::new(Fake {
                transport,
                down: AtomicBool::new(down),
                calls: AtomicU64::new(0),
            })
        }

        fn fail(&self) -> Option<OffloadError> {
            self.down
                .load(Ordering::SeqCst)
                .then(|| OffloadError::Connect {
                    transport: self.transport.as_str(),
                    message: "no answer".into(),
                })
        }
    }

    #[async_trait]
    impl Offloader for Fake {
        async fn offload(&self, _: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.fail() {
                Some(e) => Err(e),
                None => Ok(OffloadReply {
                    response: proto::TaskResponse::default(),
                    transport: self.transport,
                    elapsed: Duration::ZERO,
                    bytes_up: 0,
                    bytes_down: 0,
                    packets: None,
                }),
            }
        }

        async fn ready(&self) -> Result<(), OffloadError> {
            self.fail().map_or(Ok(()), Err)
        }
    }

    #[tokio::test]
    async fn the_task_whose_quic_attempt_fails_goes_over_grpc_and_quic_returns_after_a_probe() {
        let quic = Fake::new(Transport::Quic, true);
        let grpc = Fake::new(Transport::Grpc, false);
        let f = Failover::new(
            quic.clone(),
            grpc.clone(),
            FailoverConfig {
                stream_errors: 3,
                reprobe_min: Duration::from_millis(30),
                reprobe_max: Duration::from_millis(60),
            },
        );
        let req = OffloadRequest {
            request: proto::TaskRequest::default(),
            deadline: None,
        };
        let r = f.offload(&req).await.unwrap();
        assert_eq!(r.transport, Transport::Grpc, "same task, other transport");
        assert_eq!(f.route(), Route::Grpc);
        let r = f.offload(&req).await.unwrap();
        assert_eq!(r.transport, Transport::Grpc);
        assert_eq!(
            quic.calls.load(Ordering::SeqCst),
            1,
            "no task waits on QUIC while it is down"
        );

        quic.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
        f.offload(&req).await.unwrap(); // starts the probe
        for _ in 0..100 {
            if f.route() == Route::Quic {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(f.offload(&req).await.unwrap().transport, Transport::Quic);
        let stats = f.stats();
        assert_eq!(stats.to_grpc.load(Ordering::Relaxed), 1);
        assert_eq!(stats.to_quic.load(Ordering::Relaxed), 1);
    }

    const CFG: FailoverConfig = FailoverConfig {
        stream_errors: 3,
        reprobe_min: Duration::from_secs(1),
        reprobe_max: Duration::from_secs(8),
    };

    #[test]
    fn a_failed_handshake_switches_at_once_stream_errors_after_a_run() {
        let t0 = Instant::now();
        let mut s = FailoverState::new(CFG);
        assert_eq!(s.route(), Route::Quic);
        assert!(!s.on_quic_failure(t0, QuicFailure::Stream));
        assert!(!s.on_quic_failure(t0, QuicFailure::Stream));
        s.on_quic_ok();
        assert!(
            !s.on_quic_failure(t0, QuicFailure::Stream),
            "a success resets the run"
        );
        assert!(!s.on_quic_failure(t0, QuicFailure::Stream));
        assert!(s.on_quic_failure(t0, QuicFailure::Stream));
        assert_eq!(s.route(), Route::Grpc);

        let mut s = FailoverState::new(CFG);
        assert!(s.on_quic_failure(t0, QuicFailure::Connect));
        assert_eq!(s.route(), Route::Grpc);
        assert!(
            !s.on_quic_failure(t0, QuicFailure::Connect),
            "already switched"
        );
    }

    #[test]
    fn probes_back_off_exponentially_up_to_the_cap_and_a_good_one_returns() {
        let t0 = Instant::now();
        let mut s = FailoverState::new(CFG);
        s.on_quic_failure(t0, QuicFailure::Connect);
        assert!(!s.take_probe(t0 + Duration::from_millis(999)));
        let mut now = t0 + Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert!(s.take_probe(now));
            assert!(!s.take_probe(now), "one probe at a time");
            assert!(!s.on_probe(now, false));
            let Mode::Grpc { probe_at, .. } = s.mode() else {
                panic!()
            };
            waits.push((probe_at - now).as_secs());
            now = probe_at;
        }
        assert_eq!(waits, vec![2, 4, 8, 8, 8]);
        assert!(s.take_probe(now));
        assert!(s.on_probe(now, true));
        assert_eq!(s.mode(), Mode::Quic { stream_errors: 0 });

        // The backoff starts over after the next switch.
        s.on_quic_failure(now, QuicFailure::Connect);
        let Mode::Grpc { probe_at, .. } = s.mode() else {
            panic!()
        };
        assert_eq!(probe_at - now, CFG.reprobe_min);
    }
}
