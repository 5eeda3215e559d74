//! The admin HTTP endpoint: `/metrics` exposes per-API latency summaries and per-stage
//! produce/fetch summaries merged across shards, and the byte counters; `/health`
//! answers; scraped after real rdkafka traffic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use rdkafka::producer::FutureRecord;

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read admin response");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Value of the first sample line starting with `prefix`.
fn sample(body: &str, prefix: &str) -> f64 {
    let line = body
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix:?} in:\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_latency_summaries_and_counters_after_traffic() {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut options = BrokerOptions::default().cores(2);
    options.extra_args = vec!["--admin-listen".into(), admin.clone()];
    let broker = Broker::start_with(options);
    let bootstrap = broker.bootstrap();
    let topic = topic_name("metrics");
    create_topic(&bootstrap, &topic, 4).await;
    let p = producer(&bootstrap, &[("acks", "all")]);
    for i in 0..40 {
        let payload = format!("value-{i}");
        let key = format!("k{i}");
        p.send(
            FutureRecord::to(&topic)
                .payload(&payload)
                .key(&key)
                .partition(i % 4),
            CLIENT_TIMEOUT,
        )
        .await
        .expect("delivered");
    }
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0, 1, 2, 3], rdkafka::Offset::Beginning);
    let got = consume_to_end(&c, &[0, 1, 2, 3], CONSUME_TIMEOUT);
    assert_eq!(got.len(), 40);

    let health = http_get(&admin, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = http_get(&admin, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("# TYPE runnel_request_latency_seconds summary"));
    assert!(
        sample(
            &body,
            "runnel_request_latency_seconds_count{api=\"Produce\"}"
        ) >= 4.0
    );
    assert!(sample(&body, "runnel_request_latency_seconds_count{api=\"Fetch\"}") >= 1.0);
    let p99 = sample(
        &body,
        "runnel_request_latency_seconds{api=\"Produce\",quantile=\"0.99\"}",
    );
    assert!(p99 > 0.0 && p99 < 60.0, "produce p99 {p99}");
    assert!(sample(&body, "runnel_bytes_in_total") > 0.0);
    assert!(sample(&body, "runnel_fetch_record_bytes_total") > 0.0);
    let ratio = sample(&body, "runnel_fetch_copy_ratio");
    assert!((0.0..=1.0).contains(&ratio), "copy ratio {ratio}");
    assert!(
        body.contains("runnel_partitions{shard=\"1\"}"),
        "both shards report"
    );
    assert!(sample(&body, "runnel_cpu_seconds_total") > 0.0);
    assert!(sample(&body, "runnel_cpu_seconds_per_gib{direction=\"in\"}") > 0.0);
    // Per-stage histograms, merged across both shards. Four partitions over two shards
    // with one client connection: some produce and fetch work crosses the mesh.
    let count = |api: &str, stage: &str| {
        sample(
            &body,
            &format!("runnel_stage_latency_seconds_count{{api=\"{api}\",stage=\"{stage}\"}}"),
        )
    };
    assert!(body.contains("# TYPE runnel_stage_latency_seconds summary"));
    for stage in [
        "queue_wait",
        "cross_shard_hop",
        "append",
        "flush",
        "response_write",
    ] {
        assert!(count("Produce", stage) >= 1.0, "Produce {stage}:\n{body}");
    }
    // acks=all: every one of the 40 batches waited for its fdatasync.
    assert!(count("Produce", "flush") >= 40.0, "{body}");
    for stage in ["queue_wait", "cross_shard_hop", "read", "response_write"] {
        assert!(count("Fetch", stage) >= 1.0, "Fetch {stage}:\n{body}");
    }
    assert!(body.contains("runnel_stage_latency_seconds_count{api=\"Fetch\",stage=\"long_poll\"}"));
    let append_p99 = sample(
        &body,
        "runnel_stage_latency_seconds{api=\"Produce\",stage=\"append\",quantile=\"0.99\"}",
    );
    assert!(
        append_p99 > 0.0 && append_p99 < 60.0,
        "append p99 {append_p99}"
    );
    assert!(sample(&body, "runnel_records_in_total") >= 40.0, "{body}");
    assert!(sample(&body, "runnel_records_out_total") >= 40.0, "{body}");

    // A fetch past the end is answered OFFSET_OUT_OF_RANGE (1) and counted by code.
    let oor = consumer(&bootstrap, &[("auto.offset.reset", "error")]);
    assign(&oor, &topic, &[0], rdkafka::Offset::Offset(10_000));
    let key = "runnel_partition_errors_total{api=\"Fetch\",code=\"1\"}";
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut body = String::new();
    while std::time::Instant::now() < deadline && !body.contains(key) {
        let _ = oor.poll(Duration::from_millis(100));
        body = http_get(&admin, "/metrics");
    }
    assert!(sample(&body, key) >= 1.0, "{body}");
    let missing = http_get(&admin, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// A shard that cannot run (here the whole process is stopped for a moment, as a
/// long task or an overloaded host would hold it) is logged and counted in
/// runnel_shard_stalls_total, without the broker growing by the ~200 MiB that
/// symbolizing a backtrace costs (that is opt-in: --stall-backtraces).
#[test]
fn a_stalled_shard_is_logged_and_counted_without_a_backtrace() {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut options = BrokerOptions::default();
    options.extra_args = vec!["--admin-listen".into(), admin.clone()];
    let broker = Broker::start_with(options);
    assert_broker_serves(&broker.bootstrap());
    let stalls = || sample(&http_get(&admin, "/metrics"), "runnel_shard_stalls_total");
    let before_stalls = stalls();
    let before_rss = broker.rss_bytes();
    let signal = |sig: libc::c_int| {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(broker.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    };
    signal(libc::SIGSTOP);
    // The stall being reported: 300 ms, well over the 20 ms threshold.
    std::thread::sleep(Duration::from_millis(300));
    signal(libc::SIGCONT);
    let after = wait_for("the stall counted", CLIENT_TIMEOUT, || {
        let n = stalls();
        (n > before_stalls).then_some(n)
    });
    assert!(after >= 1.0);
    let log = broker.log_tail(64 << 10);
    let line = log
        .lines()
        .find(|l| l.contains("shard stalled"))
        .unwrap_or_else(|| panic!("no stall line in the broker log:\n{log}"));
    assert!(line.contains("worst_ms"), "{line}");
    assert!(!log.contains("Backtrace"), "a backtrace was logged:\n{log}");
    assert_broker_serves(&broker.bootstrap());
    let grown = broker.rss_bytes().saturating_sub(before_rss);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB after a stall",
        grown >> 20
    );
}
