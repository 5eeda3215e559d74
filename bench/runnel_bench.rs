//! `runnel-bench`: drives any Kafka-compatible broker through librdkafka and prints
//! throughput and latency. Closed loop: the producer keeps librdkafka's queue full for a
//! fixed message count, then a consumer reads everything back.
//!
//! ```text
//! runnel-bench --bootstrap 127.0.0.1:9092 --partitions 16 --message-bytes 1024 \
//!              --messages 500000 --acks all
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "Produce/consume load against a Kafka-compatible broker")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to use (created if missing); default: a fresh name per run.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// 0, 1 or all
    #[arg(long, default_value = "all")]
    acks: String,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value_t = 1_048_576)]
    batch_bytes: usize,
    #[arg(long, default_value = "none")]
    compression: String,
    /// Skip the consume phase.
    #[arg(long)]
    produce_only: bool,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// Latency bound of the histograms: 60 s in µs.
const LATENCY_US_MAX: u64 = 60_000_000;

struct Ctx {
    latency_us: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Box<Instant>) {
        match result {
            Ok(_) => {
                let us = sent_at.elapsed().as_micros() as u64;
                if let Ok(mut h) = self.latency_us.lock() {
                    h.saturating_record(us.max(1));
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("delivery failed: {e}");
                }
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let topic = args.topic.clone().unwrap_or_else(|| {
        format!(
            "bench-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        )
    });
    if let Err(e) = create_topic(&args, &topic) {
        eprintln!(
            "runnel-bench: cannot create topic {topic} on {}: {e}",
            args.bootstrap
        );
        std::process::exit(1);
    }
    let produced = produce(&args, &topic);
    let consumed = if !args.produce_only && produced.acked > 0 {
        Some(consume(&args, &topic, produced.acked))
    } else {
        None
    };
    // One machine-readable line for scripts (perf/compare).
    let (c_mbps, c_records) = consumed.unwrap_or((0.0, 0));
    println!(
        "json {{\"produce_mb_s\":{:.3},\"produce_msg_s\":{:.1},\"acked\":{},\"failed\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"consume_mb_s\":{:.3},\"consumed\":{}}}",
        produced.mb_s, produced.msg_s, produced.acked, produced.failed, produced.p50_ms, produced.p99_ms, produced.p999_ms, produced.max_ms, c_mbps, c_records
    );
    if produced.failed > 0 || (consumed.is_some() && c_records != produced.acked) {
        std::process::exit(1);
    }
}

struct Produced {
    acked: u64,
    failed: u64,
    mb_s: f64,
    msg_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn create_topic(args: &Args, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let new = NewTopic::new(topic, args.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))
        .map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("{t}: {code}")),
        }
    }
    Ok(())
}

fn produce(args: &Args, topic: &str) -> Produced {
    let ctx = Ctx {
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds"),
        ),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    let producer: BaseProducer<Ctx> = match ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        // Room for the largest message asked for (librdkafka's default is 1 MB).
        .set(
            "message.max.bytes",
            (args.message_bytes + 4096).max(1_000_000).to_string(),
        )
        .create_with_context(ctx)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("runnel-bench: cannot create producer: {e}");
            std::process::exit(1);
        }
    };
    let payload = vec![b'x'; args.message_bytes];
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.messages && Instant::now() < deadline {
        let key = (sent % 1024).to_string();
        let record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .payload(&payload[..])
            .key(&key)
            .partition((sent % args.partitions as u64) as i32);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => {
                eprintln!("runnel-bench: send failed: {e}");
                producer.context().failed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = producer.flush(left) {
        eprintln!("runnel-bench: flush: {e}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let acked = ctx.acked.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let h = ctx
        .latency_us
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let mb = acked as f64 * args.message_bytes as f64 / 1e6;
    println!(
        "produce  partitions={} size={}B acks={} linger={}ms compression={}",
        args.partitions, args.message_bytes, args.acks, args.linger_ms, args.compression
    );
    println!(
        "produce  acked={acked} failed={failed} time={elapsed:.2}s  {:.1} MB/s  {:.0} msg/s",
        mb / elapsed,
        acked as f64 / elapsed
    );
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "produce  latency send->ack ms: p50={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        ms(0.50),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e3
    );
    Produced {
        acked,
        failed,
        mb_s: mb / elapsed,
        msg_s: acked as f64 / elapsed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1e3,
    }
}

/// Returns (MB/s, records consumed).
fn consume(args: &Args, topic: &str, expected: u64) -> (f64, u64) {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runnel-bench: cannot create consumer: {e}");
            return (0.0, 0);
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        eprintln!("runnel-bench: assign: {e}");
        return (0.0, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => eprintln!("runnel-bench: consume: {e}"),
            None => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "consume  records={got}/{expected} time={elapsed:.2}s  {:.1} MB/s  {:.0} msg/s",
        bytes as f64 / 1e6 / elapsed,
        got as f64 / elapsed
    );
    (bytes as f64 / 1e6 / elapsed, got)
}
