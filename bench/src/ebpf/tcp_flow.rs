//! TCP traffic between the lab's namespaces, with the kernel's own view of
//! the sending socket (TCP_INFO) as the truth for retransmissions.

use anyhow::{Context, Result};
use jitter_lab::sys::netns;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The fields of TCP_INFO the check uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpInfo {
    pub total_retrans: u32,
    pub data_segs_out: u32,
}

pub fn tcp_info(s: &TcpStream) -> Result<TcpInfo> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes.
    let info = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("getsockopt TCP_INFO");
        }
        info
    };
    Ok(TcpInfo {
        total_retrans: info.tcpi_total_retrans,
        data_segs_out: info.tcpi_data_segs_out,
    })
}

#[derive(Debug, Clone, Default)]
pub struct BulkResult {
    pub bytes: u64,
    pub seconds: f64,
    /// The sender's TCP_INFO once everything sent was acknowledged.
    pub info: TcpInfo,
}

/// Sends as fast as the path allows from `edge_ns` to a sink at `addr` in
/// `cloud_ns` for `seconds`, then closes and waits until the sink has read
/// everything, so the sender's counters are final.
pub fn bulk_upload(
    edge_ns: &str,
    cloud_ns: &str,
    addr: IpAddr,
    seconds: f64,
) -> Result<BulkResult> {
    let listener = netns::run_in(cloud_ns, move || Ok(TcpListener::bind((addr, 0))?))?;
    let server_addr = listener.local_addr()?;
    let sink = std::thread::spawn(move || -> Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut s = netns::run_in(edge_ns, move || {
        Ok(TcpStream::connect_timeout(
            &server_addr,
            Duration::from_secs(10),
        )?)
    })
    .context("connecting the bulk flow")?;
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    // The sink saw the FIN; give its ACK the (clean) way back.
    std::thread::sleep(Duration::from_millis(100));
    let info = tcp_info(&s)?;
    anyhow::ensure!(
        received == sent,
        "sent {sent} bytes, the sink read {received}"
    );
    Ok(BulkResult {
        bytes: sent,
        seconds: elapsed,
        info,
    })
}
