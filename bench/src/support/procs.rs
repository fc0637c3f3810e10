//! Child processes of the benchmark (emulator, cloud, edge, driver) and
//! their cleanup on every exit path: dropped handles stop their process; on
//! SIGINT/SIGTERM/SIGHUP a signal thread stops every registered process
//! (the emulator then removes its namespaces) and removes the cgroups.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Live children (pid, name) and cgroup folders, for the signal thread.
static LIVE: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
static CGROUPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set once a termination signal arrived and the cleanup began.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a termination signal is being handled: the main thread then
/// leaves the exit to the signal thread (see [`install_signal_cleanup`]).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_cgroup(path: &Path) {
    lock(&CGROUPS).push(path.to_path_buf());
}

pub fn unregister_cgroup(path: &Path) {
    lock(&CGROUPS).retain(|p| p != path);
}

/// Blocks the termination signals in this (and every later) thread and
/// cleans up on the first one. Call before spawning threads or children.
pub fn install_signal_cleanup() -> Result<()> {
    jitter_lab::sys::on_termination_signal(|sig| {
        STOPPING.store(true, Ordering::SeqCst);
        eprintln!(
            "scenario-bench: {}: stopping every process and cleaning up",
            sig.as_str()
        );
        cleanup_all();
        std::process::exit(130);
    })
}

/// Children start with no signal blocked: the mask set by
/// [`install_signal_cleanup`] would otherwise be inherited through exec, and
/// the agents would never see the SIGTERM that asks them to shut down.
pub fn unblock_signals_at_spawn(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigprocmask on an empty set is async-signal-safe, as required
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Stops every registered child (SIGTERM, SIGKILL after 5 s) and removes
/// every registered cgroup.
fn cleanup_all() {
    let live: Vec<(i32, String)> = lock(&LIVE).clone();
    for (pid, _) in live.iter().rev() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let t0 = Instant::now();
    let mut left: Vec<i32> = live.iter().map(|(p, _)| *p).collect();
    while !left.is_empty() && t0.elapsed() < Duration::from_secs(5) {
        left.retain(|p| {
            !matches!(
                waitpid(Pid::from_raw(*p), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)
            )
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(p), None);
    }
    // Children were registered after their parents: remove them first.
    for cg in lock(&CGROUPS).iter().rev() {
        let _ = crate::support::cpu_quota::remove_dir(cg, Duration::from_secs(3));
    }
}

/// A running child with its stdout as a channel of lines and its stderr in
/// a log file. Dropping it stops the process.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with piped stdin/stdout; stderr goes to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        unblock_signals_at_spawn(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        lock(&LIVE).push((child.id() as i32, name.to_string()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading to the end so the child never blocks on a full pipe.
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // A dropped receiver just means nobody listens any more.
                    let _ = tx.send(line);
                }
            })?;
        Ok(Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the child's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Reads stdout lines until one satisfies `want`; fails on exit or timeout.
    pub fn wait_line(&self, want: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no expected output within {timeout:?}\n{}",
                        self.name,
                        self.log_tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("{} exited early\n{}", self.name, self.log_tail())
                }
            }
        }
    }

    /// Every stdout line received so far.
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin already closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.forget();
                return Ok(Some(st));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.child.try_wait()? {
            self.forget();
            return Ok(st);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        eprintln!(
            "scenario-bench: {} ignored SIGTERM for {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let st = self.child.wait()?;
        self.forget();
        Ok(st)
    }

    fn forget(&self) {
        let pid = self.child.id() as i32;
        lock(&LIVE).retain(|(p, _)| *p != pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.stop(Duration::from_secs(5));
    }
}
