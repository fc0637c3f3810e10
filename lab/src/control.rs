//! Runtime control of a running lab: executes control commands (from the
//! Unix socket, stdin, or the scenario schedule) and runs the schedule.

use crate::command::Command;
use crate::lab::Lab;
use crate::params::Dir;
use crate::scenario::{Scenario, ScheduleCursor, ScheduleEntry};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Writes one line to stdout; a closed stdout is not an error.
pub fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct SchedState {
    cursor: ScheduleCursor,
    started: Option<Instant>,
    shutdown: bool,
}

pub struct Controller {
    lab: Arc<Lab>,
    scenario: Scenario,
    sched: Mutex<SchedState>,
    wake: Condvar,
}

impl Controller {
    pub fn new(lab: Arc<Lab>, scenario: Scenario) -> Arc<Self> {
        Arc::new(Controller {
            lab,
            sched: Mutex::new(SchedState {
                cursor: ScheduleCursor::new(scenario.schedule.clone()),
                started: None,
                shutdown: false,
            }),
            scenario,
            wake: Condvar::new(),
        })
    }

    /// Executes one command line and returns the reply line.
    pub fn exec(&self, line: &str) -> String {
        match Command::parse(line)
            .map_err(anyhow::Error::msg)
            .and_then(|c| self.run(c))
        {
            Ok(Some(v)) => format!("ok {v}"),
            Ok(None) => "ok".into(),
            Err(e) => format!("error {e:#}").replace('\n', " "),
        }
    }

    fn run(&self, cmd: Command) -> Result<Option<serde_json::Value>> {
        match cmd {
            Command::Set { dirs, patch } => {
                // Validate both before changing either.
                let mut next = Vec::new();
                for d in dirs {
                    let mut p = self.lab.params(d);
                    p.apply(&patch);
                    p.validate().with_context(|| d.as_str())?;
                    next.push((d, p));
                }
                for (d, p) in next {
                    self.lab.set(d, p)?;
                }
                Ok(None)
            }
            Command::Show => Ok(Some(self.show())),
            Command::Stats => Ok(Some(self.lab.stats())),
            Command::Ping => Ok(None),
            Command::ScheduleStart => {
                self.start_schedule()?;
                Ok(None)
            }
            Command::ScheduleStop => {
                self.sched.lock().expect("sched lock").started = None;
                self.wake.notify_all();
                Ok(None)
            }
        }
    }

    pub fn show(&self) -> serde_json::Value {
        let elapsed = self
            .sched
            .lock()
            .expect("sched lock")
            .started
            .map(|s| s.elapsed().as_secs_f64());
        serde_json::json!({
            "scenario": self.scenario.name,
            "schedule_elapsed_s": elapsed,
            "uplink": self.lab.params(Dir::Uplink),
            "downlink": self.lab.params(Dir::Downlink),
        })
    }

    /// Resets the conditions to the scenario's start, restarts the link
    /// model's random streams from the seed (every run of a scenario sees
    /// the same draws from here on) and (re)starts its schedule clock at 0.
    pub fn start_schedule(&self) -> Result<()> {
        for d in Dir::BOTH {
            self.lab.set(d, self.scenario.initial(d))?;
        }
        self.lab.restart_randomness();
        let mut s = self.sched.lock().expect("sched lock");
        s.cursor.rewind();
        s.started = Some(Instant::now());
        drop(s);
        self.wake.notify_all();
        emit("event schedule_start");
        Ok(())
    }

    fn apply_entry(&self, e: &ScheduleEntry, elapsed: f64) {
        let mut result = Ok(());
        for d in Dir::BOTH {
            let mut p = self.lab.params(d);
            e.apply(d, &mut p);
            result = result.and(self.lab.set(d, p));
        }
        let json = serde_json::json!({
            "at_s": e.at_s,
            "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
            "note": e.note,
            "uplink": self.lab.params(Dir::Uplink),
            "downlink": self.lab.params(Dir::Downlink),
        });
        match result {
            Ok(()) => emit(&format!("event {json}")),
            Err(e) => emit(&format!("error schedule entry failed: {e:#}")),
        }
    }

    /// Applies schedule entries as they fall due until `shutdown`.
    pub fn schedule_loop(&self) {
        let mut s = self.sched.lock().expect("sched lock");
        while !s.shutdown {
            let wait = match s.started {
                None => Duration::from_secs(3600),
                Some(start) => {
                    let elapsed = start.elapsed().as_secs_f64();
                    let due = s.cursor.pop_due(elapsed);
                    if !due.is_empty() {
                        drop(s);
                        for e in &due {
                            self.apply_entry(e, elapsed);
                        }
                        s = self.sched.lock().expect("sched lock");
                        continue;
                    }
                    match s.cursor.next_at() {
                        Some(at) => Duration::from_secs_f64((at - elapsed).max(0.0)),
                        None => Duration::from_secs(3600),
                    }
                }
            };
            s = self.wake.wait_timeout(s, wait).expect("sched lock").0;
        }
    }

    pub fn shutdown(&self) {
        self.sched.lock().expect("sched lock").shutdown = true;
        self.wake.notify_all();
    }
}

/// The control socket: a Unix stream socket speaking the command language,
/// one reply line per command line. Removed on drop.
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    pub fn serve(path: &Path, ctl: Arc<Controller>) -> Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let ctl = ctl.clone();
                    let _ = std::thread::Builder::new()
                        .name("control-conn".into())
                        .spawn(move || serve_conn(conn, &ctl));
                }
            })?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
        })
    }
}

fn serve_conn(conn: UnixStream, ctl: &Controller) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        if writeln!(out, "{}", ctl.exec(&line)).is_err() {
            break;
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends one command to a running emulator and returns its reply line.
pub fn send(path: &Path, command: &str) -> Result<String> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is `netem-tun run` running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{command}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}
