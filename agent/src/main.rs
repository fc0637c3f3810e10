//! `agent`: the operator's front door (edge, cloud, submit, demo).

use agent::config::Config;
use agent_core::Policy;
use agent_net::tls::{self, Side, TlsConfig};
use agent_probe::EbpfProbe;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Clone)]
#[command(
    name = "agent",
    version,
    about = "Kernel-assisted edge AI offloading agent"
)]
struct Cli {
    /// TOML configuration file (every field optional; see `agent print-config`).
    #[arg(long, global = true, env = "EDGE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, default_value = "info", env = "EDGE_AGENT_LOG")]
    log: String,
    /// Log lines as text, or as JSON objects (one per line, the event's
    /// fields at the top level) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EDGE_AGENT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// TLS files from `agent gen-certs` (ca.pem and this side's certificate
    /// and key); overrides the [tls] paths of the side that runs.
    #[arg(long, global = true, env = "EDGE_AGENT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Plaintext gRPC and no QUIC, no authentication. Development only.
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Clone)]
enum Cmd {
    /// Run the edge agent: probes, decisions, local inference, offload, task API.
    Edge {
        /// Task-submission API address: host:port, or unix:/path/to.sock.
        #[arg(long)]
        listen: Option<String>,
        /// The cloud service's gRPC address.
        #[arg(long)]
        cloud_grpc: Option<String>,
        /// The cloud service's QUIC address ("" disables QUIC).
        #[arg(long)]
        cloud_quic: Option<String>,
        /// deadline-aware (default), cost-model, threshold, always-local or always-offload.
        #[arg(long)]
        policy: Option<String>,
        /// Local inference workers.
        #[arg(long)]
        workers: Option<usize>,
        /// A cgroup the inference workers join (its CPU quota bounds local
        /// inference alone); it must exist already.
        #[arg(long)]
        inference_cgroup: Option<std::path::PathBuf>,
        /// Admin HTTP listener: GET /metrics (Prometheus), /healthz, /readyz.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Run the cloud offload service.
    Cloud {
        #[arg(long)]
        listen_grpc: Option<String>,
        /// QUIC (UDP) address ("" disables QUIC).
        #[arg(long)]
        listen_quic: Option<String>,
        /// KServe V2 inference protocol (gRPC) address ("" disables it).
        #[arg(long)]
        listen_v2: Option<String>,
        /// Inferences run at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Admin HTTP listener: GET /metrics (Prometheus), /healthz, /readyz.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Send images to a running edge agent and print the results.
    Submit(agent::submit::SubmitArgs),
    /// Start the cloud service and the edge agent here and drive the default workload (image, detection and text tasks).
    Demo(agent::demo::DemoArgs),
    /// Print the effective configuration as TOML.
    PrintConfig,
    /// Signed model updates: a signing key, and signing a manifest.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Write a development CA and server and client certificates signed by
    /// it (ca.pem, server.pem/key, client.pem/key) for mutual TLS.
    GenCerts {
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Extra names or IP addresses for the server certificate (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long)]
        san: Vec<String>,
    },
}

#[derive(Subcommand, Clone)]
enum ModelsCmd {
    /// Write a new ed25519 signing key (signing.key, owner-only) and its
    /// public key (signing.pub, for `model_updates.public_key`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Fill in the SHA-256 of every model file named by DIR/manifest.toml
    /// and sign it (DIR/manifest.toml.sig). Copy the model files to the
    /// gateways' update folder first, the manifest and signature last.
    Sign {
        /// The private key from `agent models keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
}

fn parse_policy(name: &str) -> Result<Policy> {
    Policy::from_name(name)
        .with_context(|| format!("unknown policy {name:?} (one of {:?})", Policy::NAMES))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let cfg = effective_config(&cli)?;
    // Attach the eBPF probe before any runtime thread exists: Linux keeps
    // capabilities per thread, so dropping them now covers the whole process.
    let probe = match cli.cmd {
        Cmd::Edge { .. } => {
            let probe = agent::edge::load_probe(&cfg.edge);
            if let Some(p) = &probe {
                if let Err(e) = p.drop_privileges() {
                    tracing::warn!("could not drop capabilities after attaching: {e}");
                }
            }
            probe
        }
        _ => None,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, cfg, probe))
}

/// The configuration file with the command line's settings over it.
fn effective_config(cli: &Cli) -> Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(dir) = &cli.tls_dir {
        cfg.edge.tls = TlsConfig::from_dir(dir, Side::Client);
        cfg.cloud.tls = TlsConfig::from_dir(dir, Side::Server);
    }
    if cli.insecure {
        cfg.edge.tls.insecure = true;
        cfg.cloud.tls.insecure = true;
    }
    apply_overrides(&mut cfg, &cli.cmd)?;
    Ok(cfg)
}

/// On SIGHUP, reads the configuration again and applies what can change
/// live: the edge's policy and hedge budget (the model folders are looked
/// at by their own watchers on the same signal). Other changes are named
/// as needing a restart. A configuration that does not load changes
/// nothing.
fn reload_on_hangup(cli: Cli, running: Config, manager: Option<std::sync::Arc<agent::Manager>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("no SIGHUP handler, configuration reload is off: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let mut running = running;
        while hup.recv().await.is_some() {
            let new = match effective_config(&cli) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("SIGHUP: configuration not reloaded, nothing changed: {e:#}");
                    continue;
                }
            };
            if let Some(m) = &manager {
                m.reconfigure(new.edge.policy.clone(), new.edge.hedge_budget);
                tracing::info!(
                    policy = new.edge.policy.name(),
                    hedge_budget = new.edge.hedge_budget,
                    "SIGHUP: configuration reloaded"
                );
            }
            // What else differs takes a restart.
            let mut rest = new.clone();
            rest.edge.policy = running.edge.policy.clone();
            rest.edge.hedge_budget = running.edge.hedge_budget;
            let side = |c: &Config| match &cli.cmd {
                Cmd::Edge { .. } => toml::to_string(&c.edge).unwrap_or_default(),
                _ => toml::to_string(&c.cloud).unwrap_or_default(),
            };
            let (before, after) = (side(&running), side(&rest));
            let changed: Vec<&str> = after
                .lines()
                .filter(|l| !before.lines().any(|b| b == *l))
                .collect();
            if !changed.is_empty() {
                tracing::warn!(
                    "SIGHUP: these settings changed and take effect after a restart: {}",
                    changed.join("; ")
                );
            }
            running = new;
        }
    });
}

/// Command-line settings override the configuration file.
fn apply_overrides(cfg: &mut Config, cmd: &Cmd) -> Result<()> {
    match cmd {
        Cmd::Edge {
            listen,
            cloud_grpc,
            cloud_quic,
            policy,
            workers,
            inference_cgroup,
            metrics_listen,
        } => {
            if inference_cgroup.is_some() {
                cfg.edge.inference_cgroup = inference_cgroup.clone();
            }
            if metrics_listen.is_some() {
                cfg.edge.metrics_listen = metrics_listen.clone();
            }
            if let Some(v) = listen {
                cfg.edge.listen = v.clone();
            }
            if let Some(v) = cloud_grpc {
                cfg.edge.cloud_grpc = v.clone();
            }
            if let Some(v) = cloud_quic {
                cfg.edge.cloud_quic = v.clone();
            }
            if let Some(v) = policy {
                cfg.edge.policy = parse_policy(v)?;
            }
            if let Some(v) = workers {
                cfg.edge.workers = *v;
            }
        }
        Cmd::Cloud {
            listen_grpc,
            listen_quic,
            listen_v2,
            concurrency,
            metrics_listen,
        } => {
            if metrics_listen.is_some() {
                cfg.cloud.metrics_listen = metrics_listen.clone();
            }
            if let Some(v) = listen_grpc {
                cfg.cloud.listen_grpc = v.clone();
            }
            if let Some(v) = listen_quic {
                cfg.cloud.listen_quic = v.clone();
            }
            if let Some(v) = listen_v2 {
                cfg.cloud.listen_v2 = v.clone();
            }
            if let Some(v) = concurrency {
                cfg.cloud.concurrency = *v;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn run(cli: Cli, cfg: Config, probe: Option<EbpfProbe>) -> Result<()> {
    match cli.cmd.clone() {
        Cmd::Edge { .. } => {
            let edge = agent::edge::Edge::start_with_probe(&cfg.edge, None, probe).await?;
            reload_on_hangup(cli, cfg.clone(), Some(edge.manager.clone()));
            println!(
                "edge listening api={} policy={}",
                edge.api_addr,
                cfg.edge.policy.name()
            );
            shutdown_signal().await;
            tracing::info!("shutting down: draining accepted tasks");
            edge.shutdown().await
        }
        Cmd::Cloud { .. } => {
            let cloud = agent::cloud::serve(&cfg.cloud).await?;
            reload_on_hangup(cli, cfg.clone(), None);
            // One machine-readable line: scripts and the demo wait for it.
            println!("{}", cloud.listening_line());
            shutdown_signal().await;
            cloud.shutdown().await
        }
        Cmd::Submit(args) => agent::submit::run(args).await,
        Cmd::Demo(args) => agent::demo::run(cfg, args).await,
        Cmd::GenCerts { out, san } => {
            tls::gen_certs(&out, &san)?;
            println!(
                "wrote {} (CA), {}/{} (cloud), {}/{} (edge) to {}",
                tls::CA_FILE,
                tls::SERVER_CERT,
                tls::SERVER_KEY,
                tls::CLIENT_CERT,
                tls::CLIENT_KEY,
                out.display()
            );
            Ok(())
        }
        Cmd::Models(ModelsCmd::Keygen { out }) => {
            let (key, public) = agent::update::keygen(&out)?;
            println!(
                "wrote {} (keep it secret) and {} (model_updates.public_key)",
                key.display(),
                public.display()
            );
            Ok(())
        }
        Cmd::Models(ModelsCmd::Sign { key, dir }) => {
            let m = agent::update::sign(&dir, &key)?;
            for (t, e) in &m.models {
                println!(
                    "{} {} {} sha256={}",
                    t.as_str(),
                    e.version,
                    e.file.display(),
                    e.sha256
                );
            }
            println!("signed {}", dir.join(agent::update::MANIFEST).display());
            Ok(())
        }
        Cmd::PrintConfig => {
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
