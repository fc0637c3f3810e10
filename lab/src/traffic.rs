//! Measurement traffic across the lab: ICMP echo (the system's `ping`, run
//! in the edge namespace) and a TCP request/response flow between sockets
//! opened in the two namespaces.

use crate::sys::{self, netns};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingResult {
    pub sent: u64,
    pub received: u64,
    pub rtts_ms: Vec<f64>,
}

/// Parses iputils ping output: `time=` of each reply and the summary line.
pub fn parse_ping(out: &str) -> Result<PingResult> {
    let mut r = PingResult::default();
    let mut summary = false;
    for line in out.lines() {
        if let Some(t) = line.split("time=").nth(1) {
            let v = t.split_whitespace().next().unwrap_or("").parse::<f64>();
            r.rtts_ms
                .push(v.with_context(|| format!("bad ping line {line:?}"))?);
        }
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if nums.len() < 2 {
                bail!("bad ping summary {line:?}");
            }
            (r.sent, r.received) = (nums[0], nums[1]);
            summary = true;
        }
    }
    if !summary {
        bail!("ping printed no summary:\n{out}");
    }
    Ok(r)
}

/// `count` echo requests every `interval_s` from namespace `ns` to `dst`.
pub fn ping(ns: &str, dst: &str, count: u32, interval_s: f64) -> Result<PingResult> {
    let out = netns::command(ns, "ping")?
        .args(["-n", "-W", "2"])
        .args([
            "-c",
            &count.to_string(),
            "-i",
            &format!("{interval_s}"),
            dst,
        ])
        .output()
        .context("starting ping (iputils-ping installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "ping in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

#[derive(Debug, Clone, Default)]
pub struct PingPongResult {
    pub rtts_ms: Vec<f64>,
    pub exchanges: u64,
    /// Exchanges during which the client retransmitted (left out of rtts).
    pub retransmitted: u64,
}

const MSG: usize = 64;

fn total_retrans(s: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc == 0 {
            info.tcpi_total_retrans
        } else {
            0
        }
    }
}

/// A TCP flow from `edge_ns` to a server in `cloud_ns`: 64-byte requests,
/// each sent when the previous answer arrived but no sooner than
/// `min_spacing` after the previous request, for `seconds`.
pub fn tcp_pingpong(
    edge_ns: &str,
    cloud_ns: &str,
    addr: &str,
    seconds: f64,
    min_spacing: Duration,
) -> Result<PingPongResult> {
    let bind: SocketAddr = format!("{addr}:0").parse()?;
    let listener = netns::run_in(cloud_ns, move || Ok(TcpListener::bind(bind)?))?;
    let server_addr = listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name("pingpong-server".into())
        .spawn(move || -> Result<()> {
            sys::set_realtime(crate::relay::RELAY_PRIORITY - 10);
            let (mut conn, _) = listener.accept()?;
            conn.set_nodelay(true)?;
            let mut buf = [0u8; MSG];
            loop {
                match conn.read_exact(&mut buf) {
                    Ok(()) => conn.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        })?;
    let client = netns::run_in(edge_ns, move || {
        Ok(TcpStream::connect_timeout(
            &server_addr,
            Duration::from_secs(10),
        )?)
    })
    .context("connecting the TCP flow")?;
    let result = std::thread::Builder::new()
        .name("pingpong-client".into())
        .spawn(move || -> Result<PingPongResult> {
            sys::set_realtime(crate::relay::RELAY_PRIORITY - 10);
            let mut s = client;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut r = PingPongResult::default();
            let mut buf = [0u8; MSG];
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut next = Instant::now();
            while Instant::now() < end {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next = Instant::now() + min_spacing;
                buf[..8].copy_from_slice(&r.exchanges.to_be_bytes());
                let before = total_retrans(&s);
                let t0 = Instant::now();
                s.write_all(&buf)?;
                s.read_exact(&mut buf)?;
                let rtt = t0.elapsed().as_secs_f64() * 1e3;
                r.exchanges += 1;
                if total_retrans(&s) != before {
                    r.retransmitted += 1;
                } else {
                    r.rtts_ms.push(rtt);
                }
            }
            Ok(r)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("TCP client panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP server panicked"))??;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.
64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=20.3 ms
64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=14.9 ms
64 bytes from 198.18.0.2: icmp_seq=4 ttl=64 time=25 ms
64 bytes from 198.18.0.2: icmp_seq=4 ttl=64 time=26 ms (DUP!)

--- 198.18.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 3004ms
rtt min/avg/max/mdev = 14.9/20.0/25.0/4.1 ms
";

    #[test]
    fn parses_replies_and_summary() {
        let r = parse_ping(OUT).unwrap();
        assert_eq!((r.sent, r.received), (4, 3));
        assert_eq!(r.rtts_ms, vec![20.3, 14.9, 25.0, 26.0]);
    }

    #[test]
    fn parses_summary_with_errors_and_refuses_garbage() {
        let s = "10 packets transmitted, 8 received, +2 errors, 20% packet loss, time 9ms\n";
        let r = parse_ping(s).unwrap();
        assert_eq!((r.sent, r.received, r.rtts_ms.len()), (10, 8, 0));
        assert!(parse_ping("connect: Network is unreachable\n").is_err());
    }
}
