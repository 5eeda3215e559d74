//! Slow and hostile clients: each test runs one misbehaving client against a broker,
//! prints the broker's resident memory (VmRSS from /proc) before and during, asserts
//! it stays bounded, and checks that a well-behaved rdkafka producer + consumer still
//! gets through within a deadline while the hostile client is connected.
//! Bounds under test: src/net/connection.rs (buffered bytes per connection, frame read
//! timeout, buffers that grow with received bytes), src/net/memory.rs (the broker-wide
//! `queued.max.request.bytes`) and the vendored decoder's array-count bounds
//! (vendor/kafka-protocol/RUNNEL_PATCH.md).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel::segment::testing::encode_batch;

const MIB: u64 = 1 << 20;
/// A well-behaved client must get its records through within this while the hostile
/// one is connected.
const SERVE_DEADLINE: Duration = Duration::from_secs(30);

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn fetch_req(topic: &str, max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(max_bytes)])])
}

/// A well-behaved rdkafka producer and consumer get through, timed.
fn others_still_served(bootstrap: &str, what: &str) {
    let started = Instant::now();
    assert_broker_serves(bootstrap);
    let took = started.elapsed();
    eprintln!("{what}: a normal producer + consumer round trip took {took:?}");
    assert!(
        took < SERVE_DEADLINE,
        "{what}: normal clients took {took:?}"
    );
}

fn rss_mib(broker: &Broker) -> u64 {
    broker.rss_bytes() / MIB
}

/// Peak resident set size (VmHWM) of the broker.
fn hwm_mib(broker: &Broker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb >> 10
}

/// Raises this process's open-file limit (children inherit it) to at least `n`.
fn raise_nofile(n: u64) {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "setrlimit NOFILE"
            );
        }
        assert!(lim.rlim_cur >= n, "open-file limit {} < {n}", lim.rlim_cur);
    }
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Whether the broker closed `s` (EOF or reset) within `timeout`.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_client_that_never_reads_its_responses_holds_bounded_memory() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("noread");
    create_topic_blocking(&bootstrap, &topic, 1);
    // 24 MiB of data: every fetch below returns 16 MiB, much of it read from disk.
    let mut w = Wire::connect(&bootstrap);
    let value = vec![b'x'; 1000 * 1000];
    for _ in 0..24 {
        let resp = w.call(&produce_req(&topic, encode_batch(0, 0, &[&value])), 9);
        assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    }
    let before = rss_mib(&broker);

    // Pipeline fetches and never read (200k requests: ~20 MB, more than the socket
    // buffers hold): the broker must stop reading (TCP pushes back
    // on our writes) instead of queueing responses without bound.
    let mut hostile = Wire::connect(&bootstrap);
    hostile.stream.set_nonblocking(true).unwrap();
    const FETCHES: usize = 200_000;
    let mut sent = 0usize;
    let mut pending: Option<(Bytes, usize)> = None;
    let mut stalled_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < FETCHES && stalled_since.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < deadline,
            "fetch pipelining loop did not settle"
        );
        let (bytes, at) = pending.take().unwrap_or_else(|| {
            (
                hostile.encode_request(&fetch_req(&topic, 16 << 20), 12).0,
                0,
            )
        });
        match hostile.stream.write(&bytes[at..]) {
            Ok(n) if at + n == bytes.len() => {
                sent += 1;
                stalled_since = Instant::now();
            }
            Ok(n) => {
                pending = Some((bytes, at + n));
                stalled_since = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                pending = Some((bytes, at));
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write to the broker failed: {e}"),
        }
    }
    let during = rss_mib(&broker);
    eprintln!(
        "never-reading client: {sent} fetches of 16 MiB sent before the broker stopped reading; \
         broker RSS {before} MiB before, {during} MiB while stalled"
    );
    assert!(
        sent < FETCHES,
        "the broker kept reading {FETCHES} unanswered fetches"
    );
    assert!(
        during < before + 256,
        "broker RSS grew from {before} to {during} MiB for one client that does not read"
    );
    others_still_served(&bootstrap, "never-reading client");
    assert!(
        rss_mib(&broker) < before + 256,
        "broker RSS grew past the bound while others were served"
    );
    drop(hostile);
}

#[test]
fn thousands_of_idle_connections_cost_little_and_do_not_block_others() {
    const CONNECTIONS: usize = 2000;
    raise_nofile(CONNECTIONS as u64 + 2000);
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let base_fds = fd_count(broker.pid());
    let before = rss_mib(&broker);
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        idle.push(Wire::connect(&bootstrap));
    }
    // Wait until the broker accepted them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(broker.pid()) < base_fds + CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "broker accepted {} of {CONNECTIONS} connections",
            fd_count(broker.pid()) - base_fds
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = rss_mib(&broker);
    eprintln!(
        "{CONNECTIONS} idle connections: broker RSS {before} MiB before, {during} MiB with them \
         ({} KiB each)",
        (during.saturating_sub(before) << 10) / CONNECTIONS as u64
    );
    assert!(
        during < before + 64,
        "{CONNECTIONS} idle connections grew RSS from {before} to {during} MiB"
    );
    others_still_served(&bootstrap, "2000 idle connections");
    // The idle connections still work when they finally speak.
    for w in idle.iter_mut().step_by(200) {
        let resp = w.call(&ApiVersionsRequest::default(), 3);
        assert_eq!(resp.error_code, 0);
    }
}

#[test]
fn a_slowloris_frame_is_cut_off_and_announced_sizes_cost_nothing_until_sent() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let before = rss_mib(&broker);

    // 30 connections announce a frame just under socket.request.max.bytes (100 MiB)
    // and send 64 KiB of it: the broker must not reserve what was only announced.
    let mut big = Vec::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(&bootstrap).unwrap();
        s.write_all(&((100 << 20) - 16i32).to_be_bytes()).unwrap();
        s.write_all(&[0u8; 64 << 10]).unwrap();
        big.push(s);
    }
    // One connection dribbles a 200-byte frame one byte every 100 ms (20 s in all):
    // the broker must cut it off at its frame read timeout (10 s), serving others
    // meanwhile.
    let mut slow = TcpStream::connect(&bootstrap).unwrap();
    let started = Instant::now();
    let mut frame = 196i32.to_be_bytes().to_vec();
    frame.resize(200, 0);
    let mut cut_off = false;
    for (i, b) in frame.iter().enumerate() {
        if slow.write_all(&[*b]).is_err() {
            cut_off = true;
            break;
        }
        if i == 10 {
            others_still_served(&bootstrap, "slowloris");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = cut_off || closed_within(&mut slow, Duration::from_secs(5));
    let took = started.elapsed();
    eprintln!("slowloris: the broker closed the dribbling connection after {took:?}");
    assert!(
        closed,
        "a frame dribbled at 1 byte/100 ms for 20 s was not cut off"
    );
    assert!(
        took < Duration::from_secs(16),
        "slowloris cut off only after {took:?}"
    );
    // Measured after the broker surely read what the 30 big announcers sent (the
    // round trips above went through after them).
    let during = rss_mib(&broker);
    eprintln!(
        "30 announced 100 MiB frames (64 KiB sent each): broker RSS {before} MiB before, {during} MiB while they wait"
    );
    assert!(
        during < before + 128,
        "announced-but-unsent frames grew RSS from {before} to {during} MiB"
    );
    drop(big);
}

#[test]
fn requests_at_the_size_limit_are_served_with_bounded_memory() {
    // socket.request.max.bytes at 16 MiB: the test sends frames of exactly that size.
    const LIMIT: usize = 16 << 20;
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--socket-request-max-bytes".into(),
            LIMIT.to_string(),
            "--message-max-bytes".into(),
            LIMIT.to_string(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("sizelimit");
    create_topic_blocking(&bootstrap, &topic, 1);
    let before = rss_mib(&broker);

    // A produce frame of exactly LIMIT bytes: the records fill what the header and the
    // request fields leave.
    let mut w = Wire::connect(&bootstrap);
    let overhead = w
        .encode_request(&produce_req(&topic, encode_batch(0, 0, &[b""])), 9)
        .0
        .len()
        - 4;
    let mut grown = |len: usize| {
        let value = vec![b'v'; len];
        w.encode_request(&produce_req(&topic, encode_batch(0, 0, &[&value])), 9)
            .0
            .len()
            - 4
    };
    // Varint lengths grow with the value: trim it to land exactly on the limit.
    let value_len = LIMIT - overhead - (grown(LIMIT - overhead) - LIMIT);
    assert_eq!(
        grown(value_len),
        LIMIT,
        "frame at exactly socket.request.max.bytes"
    );

    // Four connections pipeline three such frames each.
    let mut conns: Vec<Wire> = (0..4).map(|_| Wire::connect(&bootstrap)).collect();
    let mut expected = Vec::new();
    for c in conns.iter_mut() {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let value = vec![b'v'; value_len];
            let (f, id) = c.encode_request(&produce_req(&topic, encode_batch(0, 0, &[&value])), 9);
            assert_eq!(f.len() - 4, LIMIT);
            c.stream.write_all(&f).unwrap();
            ids.push(id);
        }
        expected.push(ids);
    }
    for (c, ids) in conns.iter_mut().zip(&expected) {
        for &id in ids {
            let resp = c.recv_response::<ProduceRequest>(9, id);
            assert_eq!(
                resp.responses[0].partition_responses[0].error_code, 0,
                "produce of a frame at the size limit"
            );
        }
    }
    let peak = hwm_mib(&broker);
    eprintln!(
        "12 produce frames of {} MiB pipelined on 4 connections: broker RSS {before} MiB before, \
         peak (VmHWM) {peak} MiB, now {} MiB",
        LIMIT >> 20,
        rss_mib(&broker)
    );
    // Per connection: at most CONNECTION_BUFFERED_BYTES_MAX plus one frame, and the
    // log's bounded write buffers and cache on top.
    let bound = 4
        * ((runnel::net::connection::CONNECTION_BUFFERED_BYTES_MAX >> 20) as u64
            + (LIMIT >> 20) as u64)
        + 64;
    assert!(
        peak < before + bound,
        "peak RSS {peak} MiB exceeds {before} + {bound} MiB"
    );
    // One byte over the limit closes the connection.
    let mut over = TcpStream::connect(&bootstrap).unwrap();
    over.write_all(&(LIMIT as i32 + 1).to_be_bytes()).unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(10)),
        "a frame over socket.request.max.bytes was not refused"
    );
    others_still_served(&bootstrap, "size-limit frames");
}

/// `b` with `f` applied to its bytes and the CRC made right again: a batch that passes
/// the batch-level checks and lies inside.
fn relabelled(b: &Bytes, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut v = b.to_vec();
    f(&mut v);
    let crc = runnel::segment::batch::compute_crc(&v[..61], &v[61..]);
    v[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(v)
}

#[test]
fn a_client_streaming_lying_batches_and_internal_produces_is_refused_while_others_are_served() {
    use runnel::segment::compact::Codec;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const CORRUPT_MESSAGE: i16 = 2;
    const INVALID_TOPIC_EXCEPTION: i16 = 17;
    const INVALID_RECORD: i16 = 87;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("lies");
    create_topic_blocking(&bootstrap, &topic, 1);
    // The offsets topic exists once a group commits: then internal produces meet it.
    assert_broker_serves(&bootstrap);
    let before = rss_mib(&broker);

    let good = encode_batch(0, 0, &[b"value".as_slice()]);
    // 100 well-formed records of 1 MiB of zeros, ~100 KiB of gzip: the broker streams
    // them through a small window and stops at the produce bound (64 MiB).
    let bomb = {
        let zeros = vec![0u8; 1 << 20];
        let recs: Vec<u8> = (0..100)
            .flat_map(|i| runnel::segment::testing::encode_record(Some(b"k"), Some(&zeros), i, 0))
            .collect();
        runnel::segment::testing::encode_records_batch(&recs, 100, Codec::Gzip)
    };
    let lies: Vec<(&str, Bytes, &str, i16)> = vec![
        (
            "record count over the records",
            relabelled(&good, |v| v[57..61].copy_from_slice(&5i32.to_be_bytes())),
            topic.as_str(),
            INVALID_RECORD,
        ),
        (
            "record length past the batch",
            relabelled(&good, |v| v[61] = 0x7e),
            topic.as_str(),
            INVALID_RECORD,
        ),
        (
            "codec 6",
            relabelled(&good, |v| v[22] = 6),
            topic.as_str(),
            CORRUPT_MESSAGE,
        ),
        (
            "control batch",
            relabelled(&good, |v| v[22] = 0x20),
            topic.as_str(),
            INVALID_RECORD,
        ),
        ("gzip bomb", bomb, topic.as_str(), CORRUPT_MESSAGE),
        (
            "internal topic",
            good.clone(),
            "__consumer_offsets",
            INVALID_TOPIC_EXCEPTION,
        ),
    ];
    let lies: Vec<(String, Bytes, String, i16)> = lies
        .into_iter()
        .map(|(w, b, t, c)| (w.to_string(), b, t.to_string(), c))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let hostile = {
        let (bootstrap, stop) = (bootstrap.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut w = Wire::connect(&bootstrap);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut sent = 0usize;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let (what, b, t, code) = &lies[sent % lies.len()];
                let resp = w.call(&produce_req(t, b.clone()), 9);
                assert_eq!(
                    resp.responses[0].partition_responses[0].error_code, *code,
                    "{what}"
                );
                sent += 1;
            }
            sent
        })
    };
    // Let the hostile client get going, then time normal clients among its requests.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) && !hostile.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    others_still_served(&bootstrap, "lying batches and internal produces");
    let during = rss_mib(&broker);
    let peak = hwm_mib(&broker);
    stop.store(true, Ordering::Release);
    let sent = hostile.join().expect("every lie got its error code");
    eprintln!(
        "lying batches: {sent} refused; broker RSS {before} MiB before, {during} MiB during, \
         peak (VmHWM) {peak} MiB"
    );
    assert!(sent >= 6, "the hostile client sent only {sent} requests");
    // Compressed batches are checked through a small window, never held decompressed.
    assert!(
        peak < before + 64,
        "peak RSS {peak} MiB, {before} MiB before lying batches"
    );
    // Nothing of the lies is in the log: only what the normal client produced elsewhere.
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    assert!(consume_to_end(&c, &[0], CONSUME_TIMEOUT).is_empty());
}

/// A request frame for `key` v`version` (non-flexible header v1) whose body is `body`.
fn raw_request(key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(body.len() + 32);
    f.put_i16(key as i16);
    f.put_i16(version);
    f.put_i32(1);
    f.put_i16(-1); // null client id
    f.put_slice(body);
    frame(&f)
}

/// Broker stderr, all of it.
fn broker_log(broker: &Broker) -> String {
    broker.log_tail(1 << 20)
}

/// Sends `frame` on a fresh connection and expects the broker to close it (a malformed
/// request), logged, within a deadline.
fn refused_and_closed(broker: &Broker, what: &str, frame: &[u8]) {
    let mut s = TcpStream::connect(broker.bootstrap()).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // The broker may close as soon as it has decoded, before the whole frame is
    // written: a failed write is the same answer.
    let _ = s.write_all(frame);
    assert!(
        closed_within(&mut s, Duration::from_secs(30)),
        "{what}: the connection was not closed"
    );
}

#[test]
fn frames_claiming_billions_of_array_elements_are_refused_without_allocating_them() {
    // ulimit -v 4 GiB: a normal broker runs well within it, and the decoder's old
    // bound (one element per byte left, ~112 bytes each for CreateTopics) asked for
    // 7.5 GB for the 64 MiB frame below, which fails under the limit and aborts.
    let broker = Broker::start_with(BrokerOptions {
        address_space_bytes: Some(4 << 30),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    // Touch the paths once so RSS before includes them.
    assert_broker_serves(&bootstrap);
    let before = rss_mib(&broker);
    const BODY_BYTES: usize = 64 << 20;
    const SMALL_BODY_BYTES: usize = 16 << 20;
    let zeros = vec![0u8; BODY_BYTES];
    let claim = |count: i32, len: usize| {
        let mut body = BytesMut::with_capacity(len + 4);
        body.put_i32(count);
        body.put_slice(&zeros[..len]);
        body
    };

    // CreateTopics v4: 2^31 - 1 topics claimed, 64 MiB of zeros behind the count.
    refused_and_closed(
        &broker,
        "CreateTopics",
        &raw_request(ApiKey::CreateTopics, 4, &claim(i32::MAX, BODY_BYTES)),
    );
    // Metadata v4: the same claim for topics, in 16 MiB.
    refused_and_closed(
        &broker,
        "Metadata",
        &raw_request(ApiKey::Metadata, 4, &claim(i32::MAX, SMALL_BODY_BYTES)),
    );
    // DeleteTopics v3: 10 M topic names claimed in 16 MiB: fewer than the bytes, but
    // each name takes at least 2.
    refused_and_closed(
        &broker,
        "DeleteTopics",
        &raw_request(
            ApiKey::DeleteTopics,
            3,
            &claim(10_000_000, SMALL_BODY_BYTES),
        ),
    );

    assert!(broker_is_running(&broker), "the broker died");
    let peak = hwm_mib(&broker);
    let log = broker_log(&broker);
    let refusals = log.matches("Array claims").count();
    eprintln!(
        "frames of 64, 16 and 16 MiB claiming huge arrays: broker RSS {before} MiB before, \
         peak (VmHWM) {peak} MiB; {refusals} refusals logged"
    );
    assert_eq!(
        refusals, 3,
        "each refusal is logged with its reason; log:\n{log}"
    );
    // The frame buffers themselves: the largest twice (its buffer doubles as bytes
    // arrive; old and new coexist for a moment), the others once, and slack for the
    // allocator keeping freed memory a while. Before, gigabytes were asked for.
    let frames_mib = ((2 * BODY_BYTES + 2 * SMALL_BODY_BYTES) >> 20) as u64;
    assert!(
        peak < before + frames_mib + 64,
        "peak RSS {peak} MiB from {before} MiB"
    );
    others_still_served(&bootstrap, "huge array claims");
}

fn broker_is_running(broker: &Broker) -> bool {
    std::fs::metadata(format!("/proc/{}/status", broker.pid())).is_ok()
        && !std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
            .unwrap_or_default()
            .contains("State:\tZ")
}

fn free_local_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/metrics` from the admin listener at `addr`.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read admin response");
    out
}

/// Sum over shards of a per-shard sample.
fn sample_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn never_reading_fetchers_stay_within_the_broker_memory_budget() {
    // A 64 MiB budget, and ~96 MiB of data older than the batch cache: each of the 16
    // fetchers below asks for all of it (max_bytes = i32::MAX) and never reads.
    const BUDGET_MIB: u64 = 64;
    const CONNECTIONS: usize = 16;
    let admin = format!("127.0.0.1:{}", free_local_port());
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--queued-max-request-bytes".into(),
            (BUDGET_MIB << 20).to_string(),
            "--admin-listen".into(),
            admin.clone(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("budget");
    create_topic_blocking(&bootstrap, &topic, 1);
    let mut w = Wire::connect(&bootstrap);
    let value = vec![b'x'; 1000 * 1000];
    for _ in 0..96 {
        let resp = w.call(&produce_req(&topic, encode_batch(0, 0, &[&value])), 9);
        assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    }
    let before = rss_mib(&broker);

    let mut hostile: Vec<Wire> = (0..CONNECTIONS)
        .map(|_| Wire::connect(&bootstrap))
        .collect();
    for h in hostile.iter_mut() {
        for _ in 0..4 {
            let (f, _) = h.encode_request(&fetch_req(&topic, i32::MAX), 12);
            h.send_raw(&f).unwrap();
        }
    }
    // Every connection got a fetch read (sized by the budget) or is waiting for room:
    // wait until the budget's use stops changing, watching RSS meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak_rss = 0;
    let mut last = (-1.0, Instant::now());
    loop {
        assert!(Instant::now() < deadline, "budget use did not settle");
        peak_rss = peak_rss.max(rss_mib(&broker));
        let m = scrape(&admin);
        let used = sample_sum(&m, "runnel_request_memory_bytes");
        let clamped = sample_sum(&m, "runnel_fetch_responses_clamped_total");
        if used != last.0 {
            last = (used, Instant::now());
        } else if clamped >= CONNECTIONS as f64 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = scrape(&admin);
    let used_mib = sample_sum(&m, "runnel_request_memory_bytes") / f64::from(1u32 << 20);
    let limit_mib = sample_sum(&m, "runnel_request_memory_limit_bytes") / f64::from(1u32 << 20);
    eprintln!(
        "{CONNECTIONS} never-reading fetchers of i32::MAX bytes: budget {used_mib:.1} of {limit_mib:.0} MiB in use, \
         broker RSS {before} MiB before, {peak_rss} MiB at most while they wait; paused {} s, {} fetches clamped",
        sample_sum(&m, "runnel_connections_paused_seconds_total"),
        sample_sum(&m, "runnel_fetch_responses_clamped_total")
    );
    assert!(
        used_mib <= BUDGET_MIB as f64,
        "budget overspent: {used_mib} MiB"
    );
    // The budget plus slack for the reads in progress and the allocator.
    assert!(
        peak_rss < before + BUDGET_MIB + 64,
        "broker RSS grew from {before} to {peak_rss} MiB under a {BUDGET_MIB} MiB budget"
    );
    others_still_served(&bootstrap, "never-reading fetchers");
    assert!(
        rss_mib(&broker) < before + BUDGET_MIB + 64,
        "broker RSS grew past the bound while others were served"
    );
    // Everything is released once they go.
    drop(hostile);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = sample_sum(&scrape(&admin), "runnel_request_memory_bytes");
        if used == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{used} bytes still charged after the fetchers closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
