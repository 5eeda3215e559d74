//! The load itself: producer and consumer threads, each with its own librdkafka client
//! and its own histograms; a reporter (the main thread) merges them once a second for the
//! progress line and the HDR interval log, and once more at the end.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::Args;

/// Histogram range: 1 µs to 10 min. An open-loop run against a stalled broker piles up
/// latency far past any client timeout; saturating there still says "terrible".
const LATENCY_US_MAX: u64 = 600_000_000;
/// Marks a payload that carries its create time (first 8 bytes), so stray records on a
/// user-given topic are not mistaken for ours.
const PAYLOAD_MAGIC: [u8; 8] = *b"rnlbench";
/// Magic + create time in unix ns.
const PAYLOAD_HEADER_BYTES: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Metric {
    /// Ack time minus intended send time (equals actual send time in closed loop).
    Produce = 0,
    /// Ack time minus the time the client accepted the message (not CO-corrected).
    ProduceSent = 1,
    /// Consume time minus create time.
    E2e = 2,
}

pub const METRICS: [(Metric, &str); 3] = [
    (Metric::Produce, "produce"),
    (Metric::ProduceSent, "produce-sent"),
    (Metric::E2e, "e2e"),
];

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds")
}

/// One thread's numbers. The mutex is only contended by the once-a-second reporter.
pub struct Stats {
    /// Per metric: (whole run, current interval).
    hists: Mutex<Vec<(Histogram<u64>, Histogram<u64>)>>,
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
}

impl Stats {
    fn new() -> Arc<Stats> {
        Arc::new(Stats {
            hists: Mutex::new(
                METRICS
                    .iter()
                    .map(|_| (new_histogram(), new_histogram()))
                    .collect(),
            ),
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
        })
    }

    fn record(&self, m: Metric, us: u64) {
        let mut h = self.hists.lock().unwrap_or_else(|p| p.into_inner());
        let (total, interval) = &mut h[m as usize];
        total.saturating_record(us.max(1));
        interval.saturating_record(us.max(1));
    }

    /// Adds this thread's interval histograms into `into` and starts new intervals.
    fn drain_interval(&self, into: &mut [Histogram<u64>]) {
        let mut h = self.hists.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (_, interval)) in h.iter_mut().enumerate() {
            let _ = into[i].add(&*interval);
            interval.reset();
        }
    }

    fn add_totals(&self, into: &mut [Histogram<u64>]) {
        let h = self.hists.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (total, _)) in h.iter().enumerate() {
            let _ = into[i].add(total);
        }
    }
}

/// Maps `Instant`s to wall-clock nanoseconds, so create times can cross to consumers as
/// plain numbers.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            base: Instant::now(),
            base_unix_ns: unix_ns(),
        }
    }
    fn unix_ns(&self, t: Instant) -> u64 {
        self.base_unix_ns + t.saturating_duration_since(self.base).as_nanos() as u64
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Default, Debug, Clone)]
pub struct Produced {
    pub acked: u64,
    pub failed: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
}

#[derive(Default, Debug, Clone)]
pub struct Consumed {
    pub records: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
}

pub struct Outcome {
    pub topics: Vec<String>,
    /// Seconds CreateTopics took (existing topics count as created).
    pub create_s: f64,
    pub open_loop: bool,
    pub produced: Produced,
    pub consumed: Consumed,
    /// Indexed by `Metric`.
    pub latency_us: Vec<Histogram<u64>>,
    /// Broker CPU seconds spent during the run and where the number came from.
    pub broker_cpu_s: Option<(f64, String)>,
}

impl Outcome {
    pub fn latency(&self, m: Metric) -> &Histogram<u64> {
        &self.latency_us[m as usize]
    }
}

pub fn run(args: &Args) -> Result<Outcome, String> {
    let (base, fresh) = match &args.topic {
        Some(t) => (t.clone(), false),
        None => (
            format!(
                "bench-{}-{}",
                std::process::id(),
                unix_ns() / 1_000_000 % 1_000_000_000
            ),
            true,
        ),
    };
    let topics: Vec<String> = if args.topics == 1 {
        vec![base]
    } else {
        (0..args.topics).map(|i| format!("{base}-{i}")).collect()
    };
    let create_started = Instant::now();
    create_topics(args, &topics).map_err(|e| {
        format!(
            "cannot create topic {}.. on {}: {e}",
            topics[0], args.bootstrap
        )
    })?;
    let create_s = create_started.elapsed().as_secs_f64();
    let topics = Arc::new(topics);
    let cpu_before = broker_cpu(args);

    let clock = Clock::now();
    let warmup_end = clock.base + Duration::from_secs_f64(args.warmup_s);
    // Consumers first, so that they are fetching before the first message goes out.
    let consumers_done = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(u64::MAX));
    let consumed_total = Arc::new(AtomicU64::new(0));
    let mut consumer_threads = Vec::new();
    let all_parts: Vec<(usize, i32)> = (0..topics.len())
        .flat_map(|t| (0..args.partitions).map(move |p| (t, p)))
        .collect();
    let n_consumers = args.consumers().min(all_parts.len());
    for idx in 0..n_consumers {
        let stats = Stats::new();
        let parts: Vec<(usize, i32)> = all_parts
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n_consumers == idx)
            .map(|(_, tp)| *tp)
            .collect();
        let c = ConsumerJob {
            args: args.clone(),
            topics: topics.clone(),
            parts,
            start: if fresh {
                Offset::Beginning
            } else {
                Offset::End
            },
            stats: stats.clone(),
            warmup_end_unix_ns: clock.unix_ns(warmup_end),
            acked_total: acked_total.clone(),
            consumed_total: consumed_total.clone(),
            done: consumers_done.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("consumer-{idx}"))
            .spawn(move || c.run())
            .map_err(|e| e.to_string())?;
        consumer_threads.push((stats, h));
    }

    let payload = Arc::new(payload_pool(args));
    let started = Instant::now();
    let mut producer_threads = Vec::new();
    for idx in 0..args.producers {
        let stats = Stats::new();
        let p = ProducerJob {
            args: args.clone(),
            topics: topics.clone(),
            idx,
            stats: stats.clone(),
            clock,
            warmup_end,
            started,
            payload: payload.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("producer-{idx}"))
            .spawn(move || p.run())
            .map_err(|e| e.to_string())?;
        producer_threads.push((stats, h));
    }

    let mut hlog = match &args.hdr_log {
        Some(path) => Some(
            File::create(path)
                .map(BufWriter::new)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut hlog_writer = match hlog.as_mut() {
        Some(w) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment("runnel-bench latency in microseconds; tags: produce (from intended send time), produce-sent (from actual send), e2e (create -> consumed)")
                .with_start_time(SystemTime::now())
                .with_base_time(SystemTime::now())
                .with_max_value_divisor(1000.0)
                .begin_log_with(w, &mut serializer)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };

    // Reporter: once a second until every thread is done.
    let tick = Duration::from_secs(1);
    let mut interval_start = Instant::now();
    let mut last = (0u64, 0u64);
    let mut producers_end: Option<Instant> = None;
    loop {
        let producers_running = producer_threads.iter().any(|(_, h)| !h.is_finished());
        if !producers_running && producers_end.is_none() {
            producers_end = Some(Instant::now());
            let acked: u64 = producer_threads
                .iter()
                .map(|(s, _)| s.acked.load(Ordering::Relaxed))
                .sum();
            acked_total.store(acked, Ordering::Release);
        }
        let all_done = !producers_running && consumer_threads.iter().all(|(_, h)| h.is_finished());
        let wait_until = interval_start + tick;
        while !all_done && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_millis(20));
            if producers_end.is_none() && producer_threads.iter().all(|(_, h)| h.is_finished()) {
                break;
            }
        }
        let now = Instant::now();
        if now >= wait_until || all_done {
            let mut interval: Vec<Histogram<u64>> =
                METRICS.iter().map(|_| new_histogram()).collect();
            for (s, _) in producer_threads.iter().chain(consumer_threads.iter()) {
                s.drain_interval(&mut interval);
            }
            if let Some(w) = hlog_writer.as_mut() {
                for (i, (_, tag)) in METRICS.iter().enumerate() {
                    if interval[i].is_empty() {
                        continue;
                    }
                    w.write_histogram(
                        &interval[i],
                        interval_start.duration_since(clock.base),
                        now.duration_since(interval_start),
                        Tag::new(tag),
                    )
                    .map_err(|e| format!("HDR log: {e}"))?;
                }
            }
            let acked: u64 = producer_threads
                .iter()
                .map(|(s, _)| s.acked.load(Ordering::Relaxed))
                .sum();
            let consumed = consumed_total.load(Ordering::Relaxed);
            let idle = acked == last.0 && consumed == last.1;
            if !args.quiet && !idle {
                let secs = now.duration_since(interval_start).as_secs_f64().max(1e-3);
                let p = |h: &Histogram<u64>, q: f64| {
                    if h.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.2}", h.value_at_quantile(q) as f64 / 1e3)
                    }
                };
                eprintln!(
                    "  t={:5.1}s  produced {:8.0} msg/s  consumed {:8.0} msg/s  produce p50 {} p99 {} ms  e2e p99 {} ms",
                    now.duration_since(started).as_secs_f64(),
                    (acked - last.0) as f64 / secs,
                    (consumed - last.1) as f64 / secs,
                    p(&interval[0], 0.5),
                    p(&interval[0], 0.99),
                    p(&interval[2], 0.99),
                );
            }
            last = (acked, consumed);
            interval_start = now;
        }
        if all_done {
            break;
        }
    }
    drop(hlog_writer);
    if let Some(mut w) = hlog {
        w.flush().map_err(|e| format!("HDR log: {e}"))?;
    }
    consumers_done.store(true, Ordering::Release);

    let mut produced = Produced::default();
    let mut latency_us: Vec<Histogram<u64>> = METRICS.iter().map(|_| new_histogram()).collect();
    for (s, h) in producer_threads {
        match h.join() {
            Ok(Ok(elapsed)) => produced.elapsed_s = produced.elapsed_s.max(elapsed),
            Ok(Err(e)) => eprintln!("runnel-bench: producer: {e}"),
            Err(_) => eprintln!("runnel-bench: producer thread panicked"),
        }
        produced.acked += s.acked.load(Ordering::Relaxed);
        produced.failed += s.failed.load(Ordering::Relaxed);
        produced.bytes += s.acked_bytes.load(Ordering::Relaxed);
        s.add_totals(&mut latency_us);
    }
    let mut consumed = Consumed::default();
    for (s, h) in consumer_threads {
        match h.join() {
            Ok(Ok(elapsed)) => consumed.elapsed_s = consumed.elapsed_s.max(elapsed),
            Ok(Err(e)) => eprintln!("runnel-bench: consumer: {e}"),
            Err(_) => eprintln!("runnel-bench: consumer thread panicked"),
        }
        consumed.records += s.consumed.load(Ordering::Relaxed);
        consumed.bytes += s.consumed_bytes.load(Ordering::Relaxed);
        s.add_totals(&mut latency_us);
    }
    let broker_cpu_s = match (cpu_before, broker_cpu(args)) {
        (Some((a, src)), Some((b, _))) => Some((b - a, src)),
        _ => None,
    };
    Ok(Outcome {
        topics: Arc::try_unwrap(topics).unwrap_or_else(|t| (*t).clone()),
        create_s,
        open_loop: args.rate.is_some(),
        produced,
        consumed,
        latency_us,
        broker_cpu_s,
    })
}

fn client_config(args: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.bootstrap);
    c
}

/// Applies `-X KEY=VALUE` last so that it overrides the bench's own choices.
fn apply_overrides(c: &mut ClientConfig, args: &Args) {
    for kv in &args.client_config {
        if let Some((k, v)) = kv.split_once('=') {
            c.set(k, v);
        }
    }
}

fn create_topics(args: &Args, topics: &[String]) -> Result<(), String> {
    let mut cfg = client_config(args);
    apply_overrides(&mut cfg, args);
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(|e| e.to_string())?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let mut new = NewTopic::new(
                t,
                args.partitions,
                TopicReplication::Fixed(args.replication_factor),
            );
            for kv in &args.topic_config {
                if let Some((k, v)) = kv.split_once('=') {
                    new = new.set(k, v);
                }
            }
            new
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(args.timeout()))
        .request_timeout(Some(args.timeout()));
    let results =
        futures::executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("{t}: {code}")),
        }
    }
    Ok(())
}

/// Bytes every message is cut from: random (incompressible) or repetitive text.
fn payload_pool(args: &Args) -> Vec<u8> {
    let n = args.message_bytes.max().max(PAYLOAD_HEADER_BYTES);
    if args.payload == "text" {
        let text =
            b"the quick brown fox jumps over the lazy dog; runnel bench payload 0123456789\n";
        text.iter().copied().cycle().take(n).collect()
    } else {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(0x5eed).fill_bytes(&mut v);
        v
    }
}

/// Rides with each message through librdkafka to its delivery report.
struct Sent {
    intended: Instant,
    sent: Instant,
    bytes: u64,
}

struct ProducerCtx {
    stats: Arc<Stats>,
    warmup_end: Instant,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        match result {
            Ok(_) => {
                let now = Instant::now();
                if sent.intended >= self.warmup_end {
                    let us = |t: Instant| now.saturating_duration_since(t).as_micros() as u64;
                    self.stats.record(Metric::Produce, us(sent.intended));
                    self.stats.record(Metric::ProduceSent, us(sent.sent));
                }
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .acked_bytes
                    .fetch_add(sent.bytes, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.stats.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("runnel-bench: delivery failed: {e}");
                }
            }
        }
    }
}

struct ProducerJob {
    args: Args,
    topics: Arc<Vec<String>>,
    idx: usize,
    stats: Arc<Stats>,
    clock: Clock,
    warmup_end: Instant,
    started: Instant,
    payload: Arc<Vec<u8>>,
}

impl ProducerJob {
    /// Returns the seconds from the common start to this producer's last ack.
    fn run(self) -> Result<f64, String> {
        let a = &self.args;
        let mut cfg = client_config(a);
        cfg.set("acks", &a.acks)
            .set("linger.ms", a.linger_ms.to_string())
            .set("batch.size", a.batch_bytes.to_string())
            .set("compression.type", &a.compression)
            // At least two of the largest messages fit, whatever --queue-kbytes says.
            .set(
                "queue.buffering.max.kbytes",
                a.queue_kbytes
                    .max(2 * (a.message_bytes.max() as u64).div_ceil(1024))
                    .to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            // Room for the largest message asked for (librdkafka's default is 1 MB).
            .set(
                "message.max.bytes",
                (a.message_bytes.max() + 4096).max(1_000_000).to_string(),
            );
        apply_overrides(&mut cfg, a);
        // librdkafka's own polling thread serves delivery reports as they arrive (as
        // the Java client's sender thread does). Polling from this loop served one
        // report event per `poll(0)`: a backlog from the first second (metadata
        // wait) was never drained, and every later ack was recorded that much late.
        let producer: ThreadedProducer<ProducerCtx> = cfg
            .create_with_context(ProducerCtx {
                stats: self.stats.clone(),
                warmup_end: self.warmup_end,
            })
            .map_err(|e| format!("cannot create producer: {e}"))?;

        let producers = a.producers as u64;
        // This producer's share of the count and of the rate.
        let my_messages =
            a.messages / producers + u64::from((self.idx as u64) < a.messages % producers);
        let interval_s = a.rate.map(|r| producers as f64 / r);
        let end = a
            .duration_s
            .map(|d| self.started + Duration::from_secs_f64(d));
        let deadline = self.started + a.timeout();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.idx as u64 + 1);
        let mut buf = self.payload.to_vec();
        let mut key = String::new();
        let mut i = 0u64;
        loop {
            if end.is_none() && i >= my_messages {
                break;
            }
            let intended = match interval_s {
                // Spread producers' schedules so they do not fire in lockstep.
                Some(iv) => {
                    self.started
                        + Duration::from_secs_f64(
                            iv * (i as f64 + self.idx as f64 / producers as f64),
                        )
                }
                None => Instant::now(),
            };
            if end.is_some_and(|e| intended >= e) || intended >= deadline {
                break;
            }
            wait_until(intended);
            let size = a.message_bytes.sample(&mut rng);
            if size >= PAYLOAD_HEADER_BYTES {
                buf[..8].copy_from_slice(&PAYLOAD_MAGIC);
                buf[8..16].copy_from_slice(&self.clock.unix_ns(intended).to_le_bytes());
            }
            let opaque = Box::new(Sent {
                intended,
                sent: intended,
                bytes: size as u64,
            });
            // Round robin over topics, then over each topic's partitions.
            let n = i * producers + self.idx as u64;
            let topics = self.topics.len() as u64;
            let mut record =
                BaseRecord::with_opaque_to(&self.topics[(n % topics) as usize], opaque)
                    .payload(&buf[..size])
                    .timestamp((self.clock.unix_ns(intended) / 1_000_000) as i64);
            if a.keys > 0 {
                use std::fmt::Write as _;
                key.clear();
                let _ = write!(key, "k{}", rng.gen_range(0..a.keys));
                record = record.key(key.as_str());
            } else {
                record = record.partition((n / topics % a.partitions as u64) as i32);
            }
            loop {
                record.delivery_opaque.sent = Instant::now();
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        // The polling thread frees queue space as acks come back.
                        std::thread::sleep(Duration::from_micros(200));
                        if Instant::now() >= deadline {
                            return Err("timed out with the client queue full".into());
                        }
                    }
                    Err((e, _)) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("send failed: {e}"));
                    }
                }
            }
            i += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        producer.flush(left).map_err(|e| format!("flush: {e}"))?;
        Ok(self.started.elapsed().as_secs_f64())
    }
}

/// Sleeps until `t` (the polling thread serves delivery reports meanwhile).
fn wait_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

struct ConsumerJob {
    args: Args,
    topics: Arc<Vec<String>>,
    /// (index into `topics`, partition)
    parts: Vec<(usize, i32)>,
    start: Offset,
    stats: Arc<Stats>,
    warmup_end_unix_ns: u64,
    /// u64::MAX until every producer is done, then the total acked.
    acked_total: Arc<AtomicU64>,
    consumed_total: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl ConsumerJob {
    /// Returns seconds from this consumer's start to its last record.
    fn run(self) -> Result<f64, String> {
        let a = &self.args;
        let mut cfg = client_config(a);
        cfg.set("group.id", format!("runnel-bench-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            .set(
                "max.partition.fetch.bytes",
                (a.message_bytes.max() + 4096).max(10_485_760).to_string(),
            );
        apply_overrides(&mut cfg, a);
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| format!("cannot create consumer: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &self.parts {
            tpl.add_partition_offset(&self.topics[*t], *p, self.start)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        let started = Instant::now();
        let hard_deadline = started + a.timeout() * 2;
        let drain = Duration::from_secs_f64(a.drain_s);
        let mut drain_deadline: Option<Instant> = None;
        let mut last_record = started;
        let mut errors = 0u32;
        loop {
            let now = Instant::now();
            if self.done.load(Ordering::Acquire) || now >= hard_deadline {
                break;
            }
            let target = self.acked_total.load(Ordering::Acquire);
            if target != u64::MAX {
                if self.consumed_total.load(Ordering::Relaxed) >= target {
                    break;
                }
                if *drain_deadline.get_or_insert(now + drain) <= now {
                    break;
                }
            }
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let now_ns = unix_ns();
                    let payload = m.payload().unwrap_or_default();
                    let created_ns = if payload.len() >= PAYLOAD_HEADER_BYTES
                        && payload[..8] == PAYLOAD_MAGIC
                    {
                        let mut t = [0u8; 8];
                        t.copy_from_slice(&payload[8..16]);
                        Some(u64::from_le_bytes(t))
                    } else {
                        match m.timestamp() {
                            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) if ms > 0 => {
                                Some(ms as u64 * 1_000_000)
                            }
                            _ => None,
                        }
                    };
                    if let Some(c) = created_ns.filter(|c| *c >= self.warmup_end_unix_ns) {
                        self.stats
                            .record(Metric::E2e, now_ns.saturating_sub(c) / 1000);
                    }
                    self.stats.consumed.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .consumed_bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    self.consumed_total.fetch_add(1, Ordering::Relaxed);
                    last_record = Instant::now();
                }
                Some(Err(e)) => {
                    errors += 1;
                    if errors <= 5 {
                        eprintln!("runnel-bench: consume: {e}");
                    }
                }
                None => {}
            }
        }
        let target = self.acked_total.load(Ordering::Acquire);
        if target != u64::MAX && self.consumed_total.load(Ordering::Relaxed) < target {
            // Fell short: say where each partition stopped, against the broker's ends.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    let ends = consumer
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                        .map_or_else(
                            |err| format!("unknown ({err})"),
                            |(lo, hi)| format!("{lo}..{hi}"),
                        );
                    eprintln!(
                        "runnel-bench: {}/{} consumer position {:?}, log {ends}",
                        e.topic(),
                        e.partition(),
                        e.offset()
                    );
                }
            }
        }
        Ok(last_record.duration_since(started).as_secs_f64())
    }
}

/// Broker CPU seconds so far: from the admin /metrics (`runnel_cpu_seconds_total`) or
/// from /proc/PID/stat.
fn broker_cpu(args: &Args) -> Option<(f64, String)> {
    if let Some(addr) = &args.admin {
        match scrape(addr) {
            Ok(body) => {
                if let Some(v) = prometheus_sample(&body, "runnel_cpu_seconds_total") {
                    return Some((v, format!("admin {addr}")));
                }
                eprintln!("runnel-bench: {addr}/metrics has no runnel_cpu_seconds_total");
            }
            Err(e) => eprintln!("runnel-bench: scraping {addr}/metrics: {e}"),
        }
    }
    let pid = args.broker_pid?;
    let cpu = runnel::metrics::process_cpu_seconds(Some(pid))?;
    Some((cpu, format!("/proc/{pid}/stat")))
}

/// GET http://ADDR/metrics with a bounded wait.
pub fn scrape(addr: &str) -> Result<String, String> {
    let sock = addr
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("unexpected response: {:.200}", out)),
    }
}

/// Value of the sample named exactly `name` (no labels).
fn prometheus_sample(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}
