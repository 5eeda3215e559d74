//! Admin HTTP on 127.0.0.1:9644 (shard 0): `/metrics` in Prometheus text format and
//! `/health`. Each shard keeps its own histograms; a scrape collects copies from every
//! shard by message and merges them, so recording never crosses cores.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;

use crate::metrics::{self, Stage, StagedApi};
use crate::net::memory::MemoryBudget;
use crate::shard::Shard;

/// Largest HTTP request head read; admin requests are tiny.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A request must arrive and its answer be taken within this.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Admin connections open at once; more are refused until some finish or reach their
/// deadline. Scrapers need a handful; the bound keeps a flood from taking the
/// process's file descriptors from Kafka clients.
const CONNECTIONS_MAX: usize = 256;

/// One shard's numbers, copied out for a scrape.
struct Snapshot {
    latency_us: Vec<(i16, Histogram<u64>)>,
    /// Per-stage produce/fetch histograms (µs) from this shard's thread.
    stages_us: Vec<(StagedApi, Stage, Histogram<u64>)>,
    bytes_in: u64,
    bytes_out: u64,
    fetch_record_bytes: u64,
    record_bytes_copied: u64,
    connections: u64,
    memory_used_bytes: usize,
    memory_limit_bytes: usize,
    memory_paused_ns: u64,
    fetches_clamped: u64,
    stalls: u64,
    partitions: usize,
    records_in: u64,
    records_out: u64,
    partition_errors: Vec<(i16, i16, u64)>,
    offsets_batches_quarantined: u64,
}

fn snapshot(s: &Shard) -> Snapshot {
    let m = &s.metrics;
    Snapshot {
        latency_us: m
            .request_latency_us
            .borrow()
            .iter()
            .map(|(k, h)| (*k, h.clone()))
            .collect(),
        stages_us: metrics::stage_snapshot(),
        bytes_in: m.bytes_in.get(),
        bytes_out: m.bytes_out.get(),
        fetch_record_bytes: m.fetch_record_bytes.get(),
        record_bytes_copied: m.record_bytes_copied.get()
            + s.partitions
                .borrow()
                .values()
                .flat_map(|ps| ps.values())
                .map(|p| p.log.read_copied_bytes())
                .sum::<u64>(),
        connections: m.connections.get(),
        memory_used_bytes: MemoryBudget::of(s).used_bytes(),
        memory_limit_bytes: MemoryBudget::of(s).limit_bytes(),
        memory_paused_ns: MemoryBudget::of(s).paused_ns(),
        fetches_clamped: MemoryBudget::of(s).fetches_clamped(),
        stalls: m.stalls.get(),
        records_in: m.records_in.get(),
        records_out: m.records_out.get(),
        partition_errors: m.partition_errors.borrow().clone(),
        offsets_batches_quarantined: m.offsets_batches_quarantined.get(),
        partitions: s.partitions.borrow().values().map(|p| p.len()).sum(),
    }
}

/// Binds the admin listener; a failure is logged and the broker runs without it.
pub async fn start(shard: &Rc<Shard>, addr: SocketAddr) -> Option<SocketAddr> {
    let listener = match crate::ports::bind_exclusive_local(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "admin HTTP not started (metrics unavailable); set --admin-listen");
            return None;
        }
    };
    let local = listener.local_addr().ok()?;
    let shard = shard.clone();
    let open = Rc::new(std::cell::Cell::new(0usize));
    glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) if open.get() >= CONNECTIONS_MAX => {
                    crate::warn_limited!(
                        max = CONNECTIONS_MAX,
                        "admin HTTP: refusing a connection, too many open"
                    );
                    drop(stream);
                }
                Ok(stream) => {
                    let (shard, open) = (shard.clone(), open.clone());
                    open.set(open.get() + 1);
                    glommio::spawn_local(async move {
                        // A client that stalls mid-request (or never reads the answer)
                        // is dropped at the deadline instead of holding its slot.
                        let _ = glommio::timer::timeout(REQUEST_DEADLINE, async {
                            serve_one(shard, stream).await;
                            Ok(())
                        })
                        .await;
                        open.set(open.get() - 1);
                    })
                    .detach();
                }
                Err(e) => {
                    crate::warn_limited!(error = %e, "admin accept failed");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    })
    .detach();
    Some(local)
}

async fn serve_one(shard: Rc<Shard>, mut stream: glommio::net::TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", render(&shard).await),
        "/health" => ("200 OK", "ok\n".to_string()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}

/// Prometheus text exposition of every shard's numbers, merged.
pub async fn render(shard: &Rc<Shard>) -> String {
    let snaps: Vec<Snapshot> = shard.invoke_on_all(|s| async move { snapshot(&s) }).await;
    let mut merged: Vec<(i16, Histogram<u64>)> = Vec::new();
    for s in &snaps {
        for (k, h) in &s.latency_us {
            match merged.iter_mut().find(|(mk, _)| mk == k) {
                Some((_, m)) => {
                    let _ = m.add(h);
                }
                None => merged.push((*k, h.clone())),
            }
        }
    }
    merged.sort_by_key(|(k, _)| *k);
    let mut out = String::new();
    out.push_str("# HELP runnel_request_latency_seconds Time from a request's last byte read to its response ready, by API.\n");
    out.push_str("# TYPE runnel_request_latency_seconds summary\n");
    for (k, h) in &merged {
        let api = ApiKey::try_from(*k)
            .map(|a| format!("{a:?}"))
            .unwrap_or_else(|_| k.to_string());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let v = h.value_at_quantile(q) as f64 / 1e6;
            let _ = writeln!(
                out,
                "runnel_request_latency_seconds{{api=\"{api}\",quantile=\"{q}\"}} {v}"
            );
        }
        let sum = h.mean() * h.len() as f64 / 1e6;
        let _ = writeln!(
            out,
            "runnel_request_latency_seconds_sum{{api=\"{api}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "runnel_request_latency_seconds_count{{api=\"{api}\"}} {}",
            h.len()
        );
    }
    render_stages(&mut out, &snaps);
    let total = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    let counters: [(&str, &str, u64); 8] = [
        (
            "runnel_offsets_batches_quarantined_total",
            "__consumer_offsets batches skipped at group load because they do not decode.",
            total(|s| s.offsets_batches_quarantined),
        ),
        (
            "runnel_records_in_total",
            "Records appended by Produce.",
            total(|s| s.records_in),
        ),
        (
            "runnel_records_out_total",
            "Records served by Fetch.",
            total(|s| s.records_out),
        ),
        (
            "runnel_bytes_in_total",
            "Bytes of requests received.",
            total(|s| s.bytes_in),
        ),
        (
            "runnel_bytes_out_total",
            "Bytes of responses sent.",
            total(|s| s.bytes_out),
        ),
        (
            "runnel_fetch_record_bytes_total",
            "Record bytes served by Fetch.",
            total(|s| s.fetch_record_bytes),
        ),
        (
            "runnel_record_bytes_copied_total",
            "Record bytes copied in user space on the fetch path (cold reads out of DMA buffers).",
            total(|s| s.record_bytes_copied),
        ),
        (
            "runnel_shard_stalls_total",
            "Times a shard could not serve its I/O and timers for stall.threshold.ms or longer.",
            total(|s| s.stalls),
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    render_errors(&mut out, &snaps);
    let fetched = total(|s| s.fetch_record_bytes);
    let ratio = if fetched == 0 {
        0.0
    } else {
        total(|s| s.record_bytes_copied) as f64 / fetched as f64
    };
    let _ = writeln!(
        out,
        "# HELP runnel_fetch_copy_ratio Record bytes copied per record byte fetched.\n# TYPE runnel_fetch_copy_ratio gauge\nrunnel_fetch_copy_ratio {ratio}"
    );
    if let Some(cpu) = crate::metrics::process_cpu_seconds(None) {
        let gib_in = total(|s| s.bytes_in) as f64 / f64::from(1u32 << 30);
        let gib_out = total(|s| s.bytes_out) as f64 / f64::from(1u32 << 30);
        let per = |gib: f64| if gib > 0.0 { cpu / gib } else { 0.0 };
        let _ = writeln!(
            out,
            "# HELP runnel_cpu_seconds_total Broker process CPU time (user + system).\n# TYPE runnel_cpu_seconds_total counter\nrunnel_cpu_seconds_total {cpu}\n\
             # HELP runnel_cpu_seconds_per_gib CPU seconds per GiB received (in) and sent (out) since start.\n# TYPE runnel_cpu_seconds_per_gib gauge\n\
             runnel_cpu_seconds_per_gib{{direction=\"in\"}} {}\nrunnel_cpu_seconds_per_gib{{direction=\"out\"}} {}",
            per(gib_in),
            per(gib_out)
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_connections Open client connections.\n# TYPE runnel_connections gauge"
    );
    for (i, s) in snaps.iter().enumerate() {
        let _ = writeln!(out, "runnel_connections{{shard=\"{i}\"}} {}", s.connections);
    }
    render_memory(&mut out, &snaps);
    let _ = writeln!(
        out,
        "# HELP runnel_partitions Partitions owned.\n# TYPE runnel_partitions gauge"
    );
    for (i, s) in snaps.iter().enumerate() {
        let _ = writeln!(out, "runnel_partitions{{shard=\"{i}\"}} {}", s.partitions);
    }
    out
}

/// Each shard's share of queued.max.request.bytes: in use, its limit, and the backpressure
/// it caused.
fn render_memory(out: &mut String, snaps: &[Snapshot]) {
    let _ = writeln!(
        out,
        "# HELP runnel_request_memory_bytes Bytes of requests being handled plus responses not yet written (queued.max.request.bytes).\n# TYPE runnel_request_memory_bytes gauge"
    );
    for (i, s) in snaps.iter().enumerate() {
        let _ = writeln!(
            out,
            "runnel_request_memory_bytes{{shard=\"{i}\"}} {}",
            s.memory_used_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_request_memory_limit_bytes The shard's share of queued.max.request.bytes.\n# TYPE runnel_request_memory_limit_bytes gauge"
    );
    for (i, s) in snaps.iter().enumerate() {
        // An unbounded share (-1) is shown as 0 rather than 2^64.
        let limit = if s.memory_limit_bytes == usize::MAX {
            0
        } else {
            s.memory_limit_bytes
        };
        let _ = writeln!(
            out,
            "runnel_request_memory_limit_bytes{{shard=\"{i}\"}} {limit}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_connections_paused_seconds_total Time connections spent not reading new requests because the shard's request memory was spent, summed over connections.\n# TYPE runnel_connections_paused_seconds_total counter"
    );
    for (i, s) in snaps.iter().enumerate() {
        let _ = writeln!(
            out,
            "runnel_connections_paused_seconds_total{{shard=\"{i}\"}} {}",
            s.memory_paused_ns as f64 / 1e9
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_fetch_responses_clamped_total Fetch reads sized below what the client asked for, for lack of request memory.\n# TYPE runnel_fetch_responses_clamped_total counter"
    );
    for (i, s) in snaps.iter().enumerate() {
        let _ = writeln!(
            out,
            "runnel_fetch_responses_clamped_total{{shard=\"{i}\"}} {}",
            s.fetches_clamped
        );
    }
}

/// Partitions answered with an error, by API and Kafka error code, summed over shards.
fn render_errors(out: &mut String, snaps: &[Snapshot]) {
    let mut merged: Vec<(i16, i16, u64)> = Vec::new();
    for (api, code, n) in snaps.iter().flat_map(|s| s.partition_errors.iter()) {
        match merged.iter_mut().find(|(a, c, _)| a == api && c == code) {
            Some((_, _, m)) => *m += n,
            None => merged.push((*api, *code, *n)),
        }
    }
    merged.sort_unstable();
    out.push_str("# HELP runnel_partition_errors_total Produce/Fetch partitions answered with an error, by Kafka error code.\n");
    out.push_str("# TYPE runnel_partition_errors_total counter\n");
    for (api, code, n) in merged {
        let api = ApiKey::try_from(api)
            .map(|a| format!("{a:?}"))
            .unwrap_or_else(|_| api.to_string());
        let _ = writeln!(
            out,
            "runnel_partition_errors_total{{api=\"{api}\",code=\"{code}\"}} {n}"
        );
    }
}

/// Produce and fetch stage latencies, merged across shards. Stages with no samples are
/// still listed (count 0), so dashboards see every series from the start.
fn render_stages(out: &mut String, snaps: &[Snapshot]) {
    out.push_str("# HELP runnel_stage_latency_seconds Time produce and fetch requests spend in each stage (queue_wait, cross_shard_hop, append, flush, read, long_poll, response_write), merged across shards.\n");
    out.push_str("# TYPE runnel_stage_latency_seconds summary\n");
    let Some(first) = snaps.first() else {
        return;
    };
    for (i, (api, stage, h0)) in first.stages_us.iter().enumerate() {
        let mut h = h0.clone();
        for s in &snaps[1..] {
            if let Some((_, _, other)) = s.stages_us.get(i) {
                let _ = h.add(other);
            }
        }
        let labels = format!("api=\"{}\",stage=\"{}\"", api.name(), stage.name());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let v = h.value_at_quantile(q) as f64 / 1e6;
            let _ = writeln!(
                out,
                "runnel_stage_latency_seconds{{{labels},quantile=\"{q}\"}} {v}"
            );
        }
        let sum = h.mean() * h.len() as f64 / 1e6;
        let _ = writeln!(out, "runnel_stage_latency_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "runnel_stage_latency_seconds_count{{{labels}}} {}",
            h.len()
        );
    }
}
