//! `runnel consume`: print records from a topic, by assignment or in a consumer group.

use std::collections::HashSet;
use std::io::{BufWriter, ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use super::topic::topic_metadata;
use super::{CliError, CliResult, ClientArgs, Progress};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// The value (with --print-key: key, separator, value), one record per line.
    Text,
    /// One JSON object per line: topic, partition, offset, timestamp, key, value, headers.
    Json,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Where to start: beginning, end, an offset, or -N (N before the end). In a group
    /// this applies only to partitions without a committed offset (beginning|end).
    #[arg(long, allow_hyphen_values = true, default_value = "end")]
    pub from: String,
    /// Start at the first record with a timestamp >= this (ms since the epoch).
    #[arg(long, conflicts_with = "from")]
    pub from_timestamp: Option<i64>,
    /// Consume as a member of this group (offsets committed as records are printed).
    #[arg(short, long)]
    pub group: Option<String>,
    /// Only these partitions (repeatable; not with --group).
    #[arg(short, long, conflicts_with = "group")]
    pub partition: Vec<i32>,
    #[arg(short, long, value_enum, default_value = "text")]
    pub format: Format,
    /// Text format: print the key before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Text format: what goes between key and value.
    #[arg(long, default_value = "\t")]
    pub key_separator: String,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub max_messages: Option<u64>,
    /// Stop when no record arrived for this long (ms).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Stop once every assigned partition has been read to its end.
    #[arg(short = 'e', long)]
    pub exit_at_end: bool,
    /// No progress lines or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn start_offset(from: &str) -> CliResult<Offset> {
    match from {
        "beginning" | "earliest" => Ok(Offset::Beginning),
        "end" | "latest" => Ok(Offset::End),
        s => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Offset::Offset(n)),
            Ok(n) => Ok(Offset::OffsetTail(n.unsigned_abs() as i64)),
            Err(_) => Err(CliError::usage(format!(
                "--from {s:?}: expected beginning, end, an offset or -N"
            ))),
        },
    }
}

pub fn run(a: ConsumeArgs) -> CliResult {
    let offset = start_offset(&a.from)?;
    if a.group.is_some() && !matches!(offset, Offset::Beginning | Offset::End) {
        return Err(CliError::usage(
            "in a group --from is beginning or end (where partitions without a committed offset start)",
        ));
    }
    if a.group.is_some() && a.from_timestamp.is_some() {
        return Err(CliError::usage(
            "--from-timestamp is not available with --group",
        ));
    }
    a.client.check_reachable()?;
    let mut config = a.client.client_config()?;
    config
        .set(
            "group.id",
            a.group.clone().unwrap_or_else(|| "runnel-cli".into()),
        )
        .set("enable.partition.eof", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", a.group.is_some().to_string())
        .set(
            "auto.offset.reset",
            if matches!(offset, Offset::Beginning) {
                "earliest"
            } else {
                "latest"
            },
        );
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| CliError::usage(format!("consumer settings: {e}")))?;

    // Every topic must exist: a typo should say so, not wait forever.
    let mut tpl = TopicPartitionList::new();
    for topic in &a.topics {
        let md = topic_metadata(consumer.client(), topic, &a.client)?;
        for p in md.topics()[0].partitions() {
            if a.partition.is_empty() || a.partition.contains(&p.id()) {
                tpl.add_partition_offset(topic, p.id(), offset)
                    .map_err(|e| CliError::kafka("assign", e))?;
            }
        }
    }
    for &p in &a.partition {
        if !tpl.elements().iter().any(|e| e.partition() == p) {
            return Err(CliError::not_found(format!("unknown partition {p}")));
        }
    }
    if a.group.is_some() {
        let topics: Vec<&str> = a.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| CliError::kafka("subscribe", e))?;
    } else {
        if let Some(ts) = a.from_timestamp {
            tpl.set_all_offsets(Offset::Offset(ts))
                .map_err(|e| CliError::kafka("offsets for times", e))?;
            tpl = consumer
                .offsets_for_times(tpl, a.client.timeout())
                .map_err(|e| CliError::kafka("offsets for times", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| CliError::kafka("assign", e))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CliError::error(format!("signal handler: {e}")))?;
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut progress = Progress::new("consumed", format!("from {}", a.topics.join(",")), a.quiet);
    let mut at_end: HashSet<(String, i32)> = HashSet::new();
    let idle = a.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if a.max_messages.is_some_and(|n| progress.records >= n) {
            break Ok(());
        }
        if idle.is_some_and(|d| last_record.elapsed() >= d) {
            break Ok(());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if let Err(e) = out.flush() {
                    break write_error(e);
                }
            }
            Some(Ok(m)) => {
                last_record = Instant::now();
                at_end.remove(&(m.topic().to_string(), m.partition()));
                if let Err(e) = print_record(&mut out, &m, &a) {
                    break write_error(e);
                }
                progress.add(1, m.payload_len() as u64);
                if a.group.is_some() {
                    // Committed (by auto-commit, and at exit) only once printed.
                    let _ = consumer.store_offset_from_message(&m);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let assignment = consumer.assignment().unwrap_or_default();
                for e in assignment.elements() {
                    if e.partition() == p {
                        at_end.insert((e.topic().to_string(), p));
                    }
                }
                let all = assignment.count() > 0
                    && assignment
                        .elements()
                        .iter()
                        .all(|e| at_end.contains(&(e.topic().to_string(), e.partition())));
                if a.exit_at_end && all {
                    break Ok(());
                }
            }
            Some(Err(e)) => match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                | Some(RDKafkaErrorCode::UnknownTopic) => {
                    break Err(CliError::kafka("consume", e));
                }
                _ => eprintln!("runnel: consumer: {e} (retrying)"),
            },
        }
    };
    let _ = out.flush();
    if a.group.is_some() {
        // Commit what was printed; a failure here means records are re-read next time.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            if !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset)) {
                eprintln!("runnel: committing offsets failed: {e}");
            }
        }
    }
    progress.finish();
    result
}

/// A closed stdout (`| head`) ends the run quietly; other write errors fail it.
fn write_error(e: std::io::Error) -> CliResult {
    if e.kind() == ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(CliError::error(format!("writing stdout: {e}")))
    }
}

fn print_record(
    out: &mut impl Write,
    m: &BorrowedMessage<'_>,
    a: &ConsumeArgs,
) -> std::io::Result<()> {
    match a.format {
        Format::Text => {
            if a.print_key {
                out.write_all(m.key().unwrap_or_default())?;
                out.write_all(a.key_separator.as_bytes())?;
            }
            out.write_all(m.payload().unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let headers: Vec<_> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| json!({"key": h.key, "value": text(h.value)}))
                        .collect()
                })
                .unwrap_or_default();
            let v = json!({
                "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
                "timestamp": m.timestamp().to_millis(),
                "key": text(m.key()),
                "value": text(m.payload()),
                "headers": headers,
            });
            serde_json::to_writer(&mut *out, &v)?;
            out.write_all(b"\n")
        }
    }
}
