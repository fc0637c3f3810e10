//! The packet relay of one direction: reads IP packets from one TUN device,
//! asks the link model when each is due, keeps them in a min-heap of due
//! times, and writes them to the other TUN device on time. One thread per
//! direction waits with ppoll on the input or the next due time.

use crate::model::{Direction, Nanos, Verdict};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait without checking the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Packets read per wake-up before due packets get a turn.
const READ_BATCH: usize = 256;
/// SCHED_FIFO priority of relay threads.
pub const RELAY_PRIORITY: i32 = 50;

/// The emulator's monotonic clock: ns since the lab started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    due: Nanos,
    seq: u64,
    packet: Vec<u8>,
}

pub struct RelaySpec {
    pub name: String,
    pub input: Arc<File>,
    pub output: Arc<File>,
    pub model: Arc<Mutex<Direction>>,
    pub clock: Clock,
    pub stop: Arc<AtomicBool>,
    /// Set when the thread got SCHED_FIFO.
    pub realtime: Arc<AtomicBool>,
    /// Receives a message if the relay fails for good.
    pub fatal: Option<Sender<String>>,
}

pub fn spawn(spec: RelaySpec) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("relay-{}", spec.name))
        .spawn(move || {
            if crate::sys::set_realtime(RELAY_PRIORITY) {
                spec.realtime.store(true, Ordering::Relaxed);
            }
            if let Err(e) = relay_loop(&spec) {
                let msg = format!("relay {} failed: {e}", spec.name);
                eprintln!("netem-tun: {msg}");
                if let Some(tx) = &spec.fatal {
                    let _ = tx.send(msg);
                }
            }
        })
}

fn relay_loop(s: &RelaySpec) -> std::io::Result<()> {
    let mut heap: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    let mut write_errors = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        let now = s.clock.now();
        let wait = heap
            .peek()
            .map_or(MAX_WAIT, |Reverse(q)| {
                Duration::from_nanos(q.due.saturating_sub(now))
            })
            .min(MAX_WAIT);
        if !wait.is_zero() {
            let mut fds = [PollFd::new(s.input.as_fd(), PollFlags::POLLIN)];
            match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..READ_BATCH {
            let n = match (&*s.input).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let arrived = s.clock.now();
            let verdict = s
                .model
                .lock()
                .expect("link model lock")
                .on_packet(arrived, n);
            if let Verdict::Deliver(due) = verdict {
                let mut packet = pool.pop().unwrap_or_default();
                packet.clear();
                packet.extend_from_slice(&buf[..n]);
                seq += 1;
                heap.push(Reverse(Queued { due, seq, packet }));
            }
        }
        let now = s.clock.now();
        while heap.peek().is_some_and(|Reverse(q)| q.due <= now) {
            let Reverse(q) = heap.pop().expect("peeked");
            if let Err(e) = (&*s.output).write(&q.packet) {
                write_errors += 1;
                if write_errors == 1 {
                    eprintln!("netem-tun: relay {}: write failed: {e}", s.name);
                }
            }
            pool.push(q.packet);
        }
    }
    Ok(())
}
