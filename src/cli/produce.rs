//! `runnel produce`: one record per line of stdin.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde_json::json;

use super::topic::topic_metadata;
use super::{print_json, split_kv, CliError, CliResult, ClientArgs, Progress};

#[derive(Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value (a line without SEP is an error).
    #[arg(short = 'K', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Header added to every record (repeatable).
    #[arg(short = 'H', long, value_name = "KEY=VALUE")]
    pub header: Vec<String>,
    /// Partition for every record (default: by key hash, or sticky without keys).
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(short = 'z', long, default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// No progress lines or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Counts delivery reports; librdkafka calls it from `poll`/`flush` on this thread.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("not poisoned");
                if first.is_none() {
                    *first = Some(e.clone());
                }
            }
        }
    }
}

pub fn run(a: ProduceArgs) -> CliResult {
    if a.key_separator.as_deref() == Some("") {
        return Err(CliError::usage("--key-separator must not be empty"));
    }
    let mut headers = OwnedHeaders::new();
    for kv in &a.header {
        let (k, v) = split_kv(kv, "--header")?;
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    a.client.check_reachable()?;
    let mut config = a.client.client_config()?;
    config
        .set("allow.auto.create.topics", "true")
        .set("acks", &a.acks)
        .set("compression.type", &a.compression)
        .set("linger.ms", a.linger_ms.to_string())
        .set("message.timeout.ms", a.client.timeout_ms.to_string());
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(|e| CliError::usage(format!("producer settings: {e}")))?;
    // Metadata first: a missing topic (with auto-create off) is a clear NOT_FOUND
    // instead of every record timing out.
    topic_metadata(producer.client(), &a.topic, &a.client)?;

    let mut progress = Progress::new("produced", format!("to {}", a.topic), a.quiet);
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let stdin = std::io::stdin().lock();
    let mut sent = 0u64;
    let mut sent_bytes = 0u64;
    for (n, line) in stdin.split(b'\n').enumerate() {
        let line = line.map_err(|e| CliError::error(format!("reading stdin: {e}")))?;
        let (key, value): (Option<&[u8]>, &[u8]) = match sep {
            None => (None, &line),
            Some(sep) => match find(&line, sep) {
                Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
                None => {
                    return Err(CliError::error(format!(
                        "line {}: no key separator {:?}",
                        n + 1,
                        a.key_separator.as_deref().unwrap_or_default()
                    )))
                }
            },
        };
        let mut record = BaseRecord::to(&a.topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if !a.header.is_empty() {
            record = record.headers(headers.clone());
        }
        if let Some(p) = a.partition {
            record = record.partition(p);
        }
        let mut record = Some(record);
        while let Some(r) = record.take() {
            match producer.send(r) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    producer.poll(Duration::from_millis(50));
                    record = Some(r);
                }
                Err((e, _)) => return Err(CliError::kafka("produce", e)),
            }
        }
        sent += 1;
        sent_bytes += line.len() as u64;
        producer.poll(Duration::ZERO);
        let done = producer.context().delivered.load(Ordering::Relaxed);
        if done > progress.records {
            // Progress counts acknowledged records, not queued ones.
            let bytes = sent_bytes * done / sent;
            progress.add(done - progress.records, bytes - progress.bytes);
        }
        if producer.context().failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    // Everything queued must be acknowledged (or failed) within the timeout.
    let deadline = Instant::now() + a.client.timeout();
    loop {
        match producer.flush(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => {
                return Err(CliError::error(format!(
                    "{} record(s) not acknowledged within {} ms: {e}",
                    producer.in_flight_count(),
                    a.client.timeout_ms
                )))
            }
        }
    }
    let ctx = producer.context();
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    progress.add(delivered - progress.records, sent_bytes - progress.bytes);
    if a.json {
        print_json(&json!({"topic": a.topic, "delivered": delivered, "failed": failed}));
    }
    progress.finish();
    if failed > 0 {
        let e = ctx.first_error.lock().expect("not poisoned").clone();
        let e = e.expect("a failed delivery records its error");
        return Err(CliError::kafka(
            &format!("{failed} record(s) failed ({delivered} delivered)"),
            e,
        ));
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
