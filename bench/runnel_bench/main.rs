//! `runnel-bench`: drives any Kafka-compatible broker through librdkafka and reports
//! throughput and latency.
//!
//! Two ways to load the broker:
//! - **closed loop** (default): each producer keeps librdkafka's queue full, so the
//!   broker's maximum throughput is measured; latency is send → ack.
//! - **open loop** (`--rate N`): messages are scheduled at N msg/s in total, whatever the
//!   broker does. Latency is measured from each message's *intended* send time, so a
//!   stall that delays later sends shows up in their latency instead of disappearing
//!   (coordinated omission). The uncorrected send → ack histogram is reported next to it.
//!
//! Consumers run alongside the producers and measure end-to-end latency from the
//! message's create time (its intended send time, carried in the first 16 payload bytes;
//! the Kafka record timestamp in ms for smaller messages) to its arrival at the consumer.
//! Producer and consumer run on the same clock here; across machines the clocks must
//! agree (NTP/PTP) for end-to-end numbers to mean anything.
//!
//! ```text
//! runnel-bench --bootstrap 127.0.0.1:9092 --partitions 16 --message-bytes 1024 \
//!              --rate 20000 --duration-s 30 --admin 127.0.0.1:9644 \
//!              --json out.json --hdr-log out.hlog --plot out.svg
//! runnel-bench --spec perf/workloads/sla-example.toml   # SLA mode: exit 1 on a miss
//! ```
//!
//! Exit status: 0 on success, 1 when an SLA target is missed, a delivery fails or fewer
//! records came back than were acked, 2 when the run could not start.

mod load;
mod report;
mod spec;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Produce/consume load against a Kafka-compatible broker (closed or open loop)",
    args_override_self = true
)]
pub struct Args {
    /// Workload name shown in the output.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to use (created if missing; consumers then start at its end). Default: a
    /// fresh topic per run, read from the beginning.
    #[arg(long)]
    pub topic: Option<String>,
    /// Topics (named TOPIC-0.. when more than one); messages go round robin over them.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of the topics the bench creates (a cluster: 3 for RF=3).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Message size: `N` bytes, `MIN..MAX` (uniform) or `exp:MEAN` (exponential, capped
    /// at 8 × MEAN).
    #[arg(long, default_value = "1024")]
    pub message_bytes: SizeDist,
    /// Message contents: `random` (incompressible) or `text` (repetitive, compresses well).
    #[arg(long, default_value = "random")]
    pub payload: String,
    /// Messages to produce in total (ignored when --duration-s is given).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Produce for this long instead of a message count.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Open loop: total target rate in msg/s across producers. Without it: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Latency recorded in the first seconds is left out of the histograms.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_s: f64,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer threads (partitions are split among them); 0 = produce only.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Same as --consumers 0 (kept for older scripts).
    #[arg(long)]
    pub produce_only: bool,
    /// Distinct keys; 0 = no key and partitions in round robin, N = keys drawn uniformly
    /// from N and partitioned by the client's partitioner.
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// 0, 1 or all
    #[arg(long, default_value = "all")]
    pub acks: String,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 1_048_576)]
    pub batch_bytes: usize,
    /// Client send queue per producer in KiB (queue.buffering.max.kbytes). In closed
    /// loop latency is mostly time in this queue (Little's law: queue ÷ throughput);
    /// a smaller queue (the Java producer's 32 MiB = 32768) shows latency nearer the
    /// broker's, and can cost throughput where the broker gains from deep pipelines.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub queue_kbytes: u64,
    /// none, gzip, snappy, lz4 or zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Config of the topic when the bench creates it, KEY=VALUE (repeatable), e.g.
    /// max.message.bytes=2097152 for 1 MiB messages.
    #[arg(long)]
    pub topic_config: Vec<String>,
    /// Extra librdkafka property for producers and consumers, KEY=VALUE (repeatable).
    #[arg(short = 'X', long = "client-config")]
    pub client_config: Vec<String>,
    /// Broker admin HTTP address (host:port); its /metrics gives the broker's CPU seconds
    /// per GiB during the run (Runnel).
    #[arg(long)]
    pub admin: Option<String>,
    /// Broker process id on this machine: CPU seconds from /proc/PID/stat (any broker).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Write the configuration and results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HDR histogram interval log (1 s intervals; tags produce, produce-sent, e2e).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Workload spec (TOML); its keys are these flags' long names, its `[sla]` table the
    /// targets. Flags on the command line override the file.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Consumers get this long after the last ack to read everything back.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
    /// Give up after this many seconds in any phase.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Check the arguments (and spec), print the effective configuration and exit
    /// without connecting.
    #[arg(long)]
    pub check: bool,
    /// No per-second progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Args {
    pub fn consumers(&self) -> usize {
        if self.produce_only {
            0
        } else {
            self.consumers
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

/// Message size distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeDist {
    Fixed(usize),
    Uniform { min: usize, max: usize },
    Exp { mean: usize },
}

/// Largest message the bench builds (Kafka's own limits are far below).
const MESSAGE_BYTES_MAX: usize = 64 << 20;

impl SizeDist {
    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { max, .. } => max,
            SizeDist::Exp { mean } => mean * 8,
        }
    }

    pub fn sample(&self, rng: &mut impl rand::Rng) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { min, max } => rng.gen_range(min..=max),
            SizeDist::Exp { mean } => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                ((-u.ln() * mean as f64) as usize).min(mean * 8)
            }
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad size {t:?} in {s:?}"))
        };
        let d = if let Some(mean) = s.strip_prefix("exp:") {
            SizeDist::Exp { mean: num(mean)? }
        } else if let Some((a, b)) = s.split_once("..") {
            let (min, max) = (num(a)?, num(b)?);
            if min > max {
                return Err(format!("size range {s:?}: MIN > MAX"));
            }
            SizeDist::Uniform { min, max }
        } else {
            SizeDist::Fixed(num(s)?)
        };
        if d.max() > MESSAGE_BYTES_MAX {
            return Err(format!(
                "message size {s:?} above {MESSAGE_BYTES_MAX} bytes"
            ));
        }
        Ok(d)
    }
}

impl std::fmt::Display for SizeDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeDist::Fixed(n) => write!(f, "{n}"),
            SizeDist::Uniform { min, max } => write!(f, "{min}..{max}"),
            SizeDist::Exp { mean } => write!(f, "exp:{mean}"),
        }
    }
}

impl Serialize for SizeDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn main() {
    let (args, sla) = match spec::parse_with_spec() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("runnel-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = validate(&args) {
        eprintln!("runnel-bench: {e}");
        std::process::exit(2);
    }
    if args.check {
        match serde_json::to_string_pretty(&args) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("runnel-bench: {e}"),
        }
        if let Some(sla) = &sla {
            println!("sla targets: {}", sla.describe());
        }
        return;
    }
    let outcome = match load::run(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("runnel-bench: {e}");
            std::process::exit(2);
        }
    };
    let checks = sla.as_ref().map(|t| t.evaluate(&outcome));
    let results = report::Results::new(&args, &outcome, checks);
    report::print_table(&args, &results);
    if let Some(checks) = &results.sla {
        report::print_sla(checks);
    }
    // One machine-readable line for scripts (perf/compare).
    println!("json {}", report::compat_line(&results));
    let mut failed = false;
    let mut write = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            eprintln!("runnel-bench: writing {what}: {e}");
            failed = true;
        }
    };
    if let Some(path) = &args.json {
        write("JSON", report::write_json(path, &args, &results));
    }
    if let Some(path) = &args.plot {
        write("plot", report::write_plot(path, &args, &outcome));
    }
    let lost = args.topic.is_none()
        && args.consumers() > 0
        && outcome.consumed.records < outcome.produced.acked;
    if lost {
        eprintln!(
            "runnel-bench: consumed {} of {} acked records",
            outcome.consumed.records, outcome.produced.acked
        );
    }
    let sla_failed = results
        .sla
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| !c.pass));
    if failed || sla_failed || lost || outcome.produced.failed > 0 {
        std::process::exit(1);
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if args.partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    if args.topics < 1 {
        return Err("--topics must be at least 1".into());
    }
    if args.producers < 1 {
        return Err("--producers must be at least 1".into());
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number of msg/s".into());
        }
    }
    if let Some(d) = args.duration_s {
        if !(d.is_finite() && d > 0.0) {
            return Err("--duration-s must be positive".into());
        }
    }
    if args.replication_factor < 1 {
        return Err("--replication-factor must be at least 1".into());
    }
    if !matches!(args.payload.as_str(), "random" | "text") {
        return Err("--payload must be random or text".into());
    }
    for kv in &args.client_config {
        if !kv.contains('=') {
            return Err(format!("-X {kv}: expected KEY=VALUE"));
        }
    }
    for kv in &args.topic_config {
        if !kv.contains('=') {
            return Err(format!("--topic-config {kv}: expected KEY=VALUE"));
        }
    }
    Ok(())
}
