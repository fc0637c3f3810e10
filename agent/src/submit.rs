//! `agent submit`: a client of the edge agent's task API.

use agent_core::{Priority, TaskType};
use agent_net::task_api::{self, Submission};
use anyhow::Result;
use datasets::workload::{Truth, Workload};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// The edge agent's task API: host:port, or unix:/path/to.sock.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub edge: String,
    /// Payload files: JPEG or PNG images for image_classification and
    /// object_detection, UTF-8 text for nlp_analysis; without any, items of
    /// the models' held-out sets.
    pub files: Vec<PathBuf>,
    /// image_classification, object_detection or nlp_analysis.
    #[arg(long, default_value = "image_classification")]
    pub task_type: String,
    /// How many held-out items to send when no files are given.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// low, medium, high or critical.
    #[arg(long, default_value = "medium")]
    pub priority: String,
    /// Deadline relative to sending, in milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Mutual TLS to a task API that requires it: a folder with `ca.pem`,
    /// `client.pem` and `client.key` (as `agent gen-certs` writes them).
    #[arg(long)]
    pub api_tls_dir: Option<PathBuf>,
    /// The name the task API's certificate carries.
    #[arg(long, default_value = "localhost")]
    pub api_server_name: String,
}

pub fn parse_priority(s: &str) -> Result<Priority> {
    Ok(match s {
        "low" => Priority::Low,
        "medium" => Priority::Medium,
        "high" => Priority::High,
        "critical" => Priority::Critical,
        _ => anyhow::bail!("unknown priority {s:?} (low, medium, high, critical)"),
    })
}

/// One line describing a response and its decision.
pub fn describe(resp: &proto::TaskResponse, label: Option<u8>, latency: Duration) -> String {
    let ms = latency.as_secs_f64() * 1e3;
    let mut line = if resp.success {
        let verdict = match label {
            Some(l) if l as i32 == resp.predicted_class => format!(" label={l} ok"),
            Some(l) => format!(" label={l} WRONG"),
            None => String::new(),
        };
        let boxes = if resp.boxes.is_empty() {
            String::new()
        } else {
            format!(" boxes={}", resp.boxes.len())
        };
        format!(
            "{:<10} {:<11} class={} {} conf={:.2}{boxes}{verdict} {ms:.2}ms",
            resp.task_id, resp.processed_by, resp.predicted_class, resp.label, resp.confidence
        )
    } else {
        format!(
            "{:<10} failed: {} ({ms:.2}ms)",
            resp.task_id, resp.error_message
        )
    };
    if resp.fell_back {
        line.push_str(" [offload failed, ran locally]");
    }
    if let Some(d) = &resp.decision {
        line.push_str(&format!(
            " | {} -> {} ({}): local {:.2} [q {:.2} + inf {:.2}] vs offload {:.2} [up {:.2} + rtt {:.2} + jit {:.2} + cloud {:.2} + down {:.2}; P(loss) {:.2}] src={}",
            d.policy,
            d.path,
            d.reason,
            d.local_total_ms,
            d.local_queue_ms,
            d.local_inference_ms,
            d.offload_total_ms,
            d.upload_ms,
            d.rtt_ms,
            d.jitter_penalty_ms,
            d.cloud_inference_ms,
            d.download_ms,
            d.p_loss,
            d.network_source
        ));
        for (name, o) in [("local", &d.local_outlook), ("offload", &d.offload_outlook)] {
            if let Some(o) = o {
                line.push_str(&format!(" {name}~[p95 {:.2}", o.p95_ms));
                if let Some(p) = o.p_meet {
                    line.push_str(&format!(" P(in time) {p:.2}"));
                }
                line.push(']');
            }
        }
    }
    line
}

pub async fn run(args: SubmitArgs) -> Result<()> {
    let priority = parse_priority(&args.priority)?;
    let task_type: TaskType = args.task_type.parse().map_err(anyhow::Error::msg)?;
    let items: Vec<(String, Vec<u8>, Option<u8>)> = if args.files.is_empty() {
        let w = Workload::load()?;
        (0..args.count)
            .map(|i| {
                let item = w.item(task_type.as_str(), i).expect("a set for every type");
                let label = match item.truth {
                    Truth::Class(l) => Some(l),
                    Truth::Boxes(_) => None,
                };
                (format!("heldout-{i}"), item.payload, label)
            })
            .collect()
    } else {
        args.files
            .iter()
            .map(|p| Ok((p.display().to_string(), std::fs::read(p)?, None)))
            .collect::<Result<_>>()?
    };
    let material = match &args.api_tls_dir {
        Some(dir) => agent_net::tls::TlsConfig::from_dir(dir, agent_net::tls::Side::Client)
            .load(agent_net::tls::Side::Client)?,
        None => None,
    };
    let client = task_api::connect_with(
        &args.edge,
        material
            .as_ref()
            .map(|m| (m, args.api_server_name.as_str())),
    )
    .await?;
    let deadline = args.deadline_ms.map(Duration::from_millis);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut handles = Vec::new();
    for (id, payload, label) in items {
        let mut c = client.clone();
        let permit = sem.clone().acquire_owned().await?;
        handles.push(tokio::spawn(async move {
            let submission = Submission {
                id: id.clone(),
                task_type,
                payload,
                priority,
                deadline,
            };
            let (r, lat) = task_api::send(&mut c, submission).await;
            drop(permit);
            match r {
                Ok(resp) => println!("{}", describe(&resp, label, lat)),
                Err(s) => println!("{id:<10} rejected: {} ({:?})", s.message(), s.code()),
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    Ok(())
}
