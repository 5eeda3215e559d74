// size: the one harness every integration test shares (brokers, clusters, clients, raw wire frames); one file keeps `mod common;` the only import a test needs.
//! Test harness shared by the `tests/broker_*.rs` integration tests.
//!
//! [`Broker`] runs the real `runnel` binary as a subprocess on an ephemeral
//! 127.0.0.1 port with its own temporary data directory, and waits for the
//! ready line (`runnel: ready on 127.0.0.1:PORT`) on its stdout — never a sleep.
//! Every wait in here is bounded; a broker that does not come up fails the
//! test with the tail of its log.
//!
//! Besides the broker, this module has:
//! - rdkafka client factories with short timeouts (`producer`, `consumer`, `admin`),
//! - `consume_to_end`, which reads assigned partitions until every one reports
//!   end-of-partition, so tests can assert exact counts,
//! - `Wire`, a raw `std::net::TcpStream` Kafka client built on the
//!   `kafka-protocol` crate, for compatibility and malformed-input tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryResult, FutureProducer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

/// How long the broker may take from spawn to its ready line. Generous because
/// a cold debug binary on a loaded 2-core CI box can be slow to start.
pub const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one client-side operation (produce delivery, metadata, ...).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for reading a whole topic back.
pub const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for starting a broker. `Default` is one core, auto-create on, one
/// partition per auto-created topic.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub cores: usize,
    pub num_partitions: Option<u32>,
    pub auto_create_topics: Option<bool>,
    pub extra_args: Vec<String>,
    /// Where the data directory is created (a temp dir inside it); default: the
    /// system temp dir. For tests that give the broker a filesystem of their own.
    pub data_parent: Option<PathBuf>,
    /// RLIMIT_AS for the broker process (`ulimit -v`): an allocation beyond it fails
    /// (and aborts the broker) instead of being reserved lazily, so a test can tell a
    /// huge allocation from a huge RSS.
    pub address_space_bytes: Option<u64>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            cores: 1,
            num_partitions: None,
            auto_create_topics: None,
            extra_args: Vec::new(),
            data_parent: None,
            address_space_bytes: None,
        }
    }
}

impl BrokerOptions {
    pub fn cores(mut self, cores: usize) -> Self {
        self.cores = cores;
        self
    }
    pub fn num_partitions(mut self, n: u32) -> Self {
        self.num_partitions = Some(n);
        self
    }
    pub fn auto_create_topics(mut self, on: bool) -> Self {
        self.auto_create_topics = Some(on);
        self
    }
}

/// A running `runnel serve` subprocess. Dropping it SIGKILLs the process and
/// removes its data directory.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    options: BrokerOptions,
    data_dir: tempfile::TempDir,
    log_dir: tempfile::TempDir,
    starts: u32,
}

fn free_port() -> u16 {
    // Bind port 0 and release it. Another process could grab the port in the
    // gap; the ready-line check would then fail loudly rather than silently.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

pub fn runnel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel"))
}

impl Broker {
    /// One core, defaults otherwise.
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(options: BrokerOptions) -> Broker {
        Broker::start_on(free_port(), options)
    }

    /// Like `start_with`, on a Kafka port the caller picked (clusters need every
    /// broker's ports before the first one starts).
    pub fn start_on(port: u16, options: BrokerOptions) -> Broker {
        let mut data_dir = tempfile::Builder::new();
        data_dir.prefix("runnel-data-");
        let data_dir = match &options.data_parent {
            Some(parent) => data_dir.tempdir_in(parent),
            None => data_dir.tempdir(),
        }
        .expect("tempdir");
        let log_dir = tempfile::Builder::new()
            .prefix("runnel-log-")
            .tempdir()
            .expect("tempdir");
        let mut broker = Broker {
            child: None,
            port,
            options,
            data_dir,
            log_dir,
            starts: 0,
        };
        broker.spawn();
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is running").id()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.log_dir.path().join(format!("stderr.{start}.log"))
    }

    /// The last `max_bytes` of the current run's stderr.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let text = std::fs::read(self.log_path(self.starts)).unwrap_or_default();
        let from = text.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "spawn while a broker process is still running"
        );
        self.starts += 1;
        let stderr = File::create(self.log_path(self.starts)).expect("create broker log");
        let mut cmd = Command::new(runnel_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--cores")
            .arg(self.options.cores.to_string());
        if let Some(n) = self.options.num_partitions {
            cmd.arg("--num-partitions").arg(n.to_string());
        }
        if let Some(on) = self.options.auto_create_topics {
            cmd.arg("--auto-create-topics").arg(on.to_string());
        }
        cmd.args(&self.options.extra_args);
        // Test brokers run in parallel: keep them off the fixed admin HTTP port
        // (127.0.0.1:9644). An env var, so an explicit `--admin-listen` in
        // extra_args wins and a broker without the setting ignores it.
        cmd.env("RUNNEL_ADMIN_LISTEN", "off");
        // Kafka's 3 s initial group rebalance delay would slow every group test; tests
        // of the delay pass --group-initial-rebalance-delay-ms, which wins.
        cmd.env("RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS", "0");
        if let Some(limit) = self.options.address_space_bytes {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", runnel_bin().display()));

        // A thread owns stdout for the life of the process: it forwards lines
        // until the ready line and then keeps draining, so the broker never
        // blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);

        let expected = format!("runnel: ready on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + BROKER_READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let tail = self.log_tail(4000);
                    self.kill();
                    panic!(
                        "broker did not print {expected:?} within {BROKER_READY_TIMEOUT:?}; \
                         stdout so far: {seen:?}\n--- stderr tail ---\n{tail}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().unwrap().wait().ok();
                    self.child = None;
                    panic!(
                        "broker exited before it was ready (status {status:?}); stdout: {seen:?}\n\
                         --- stderr tail ---\n{}",
                        self.log_tail(4000)
                    );
                }
            }
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid, which we have not
            // reaped yet, so the pid cannot have been reused.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
            // SIGKILL cannot be caught; the wait is bounded by the kernel.
            // SIGTERM is bounded by `terminate` below.
            let _ = child.wait();
        }
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; SIGKILL after that.
    /// Returns true if the broker exited on its own.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Sends SIGTERM and returns at once (see `wait_exit`). No-op if not running.
    pub fn sigterm(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is its.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status (`None`
    /// if it is still running then, or was not running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().ok().flatten();
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (if running) and start again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL (if running) and start again on the same port and data dir with
    /// `extra_args` in place of the options' (a changed setting across a restart).
    pub fn restart_with_args(&mut self, extra_args: Vec<String>) {
        self.kill();
        self.options.extra_args = extra_args;
        self.spawn();
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident set size of the broker process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- runnel stderr tail (port {}) ---\n{}",
                self.port,
                self.log_tail(6000)
            );
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Clusters

/// `n` distinct free ports, all held open until every one is picked (so the same port
/// is never handed out twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Brokers on 127.0.0.1 forming one cluster: node ids 1..=n, each with its own Kafka
/// port, cluster (Raft) port and data dir; every broker is a metadata voter.
pub struct Cluster {
    pub brokers: Vec<Broker>,
    /// `start_proxied`: (from, to) → the proxy `from` reaches `to`'s cluster port
    /// through. Empty for `start`.
    pub links: std::collections::HashMap<(i32, i32), NetProxy>,
    /// Each broker's cluster (Raft and replication) port, by node id - 1.
    pub cluster_ports: Vec<u16>,
}

impl Cluster {
    /// Starts `n` brokers (each waits only for its own ready line, not for a quorum).
    pub fn start(n: usize, options: BrokerOptions) -> Cluster {
        let ports = free_ports(2 * n);
        let (kafka, raft) = ports.split_at(n);
        let voters: Vec<String> = raft
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect();
        let brokers = (0..n)
            .map(|i| {
                let mut o = options.clone();
                o.extra_args.extend([
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--controller-quorum-voters".to_string(),
                    voters.join(","),
                ]);
                Broker::start_on(kafka[i], o)
            })
            .collect();
        Cluster {
            brokers,
            links: Default::default(),
            cluster_ports: raft.to_vec(),
        }
    }

    /// Like `start`, but every broker reaches every other one's cluster port (Raft and
    /// replication traffic) through a proxy of its own per direction, so a test can cut
    /// the network between brokers (`isolate`, `heal`). Clients still reach every
    /// broker's Kafka port directly.
    pub fn start_proxied(n: usize, options: BrokerOptions) -> Cluster {
        let ports = free_ports(2 * n);
        let (kafka, raft) = ports.split_at(n);
        let mut links = std::collections::HashMap::new();
        for from in 1..=n as i32 {
            for to in 1..=n as i32 {
                if from != to {
                    links.insert((from, to), NetProxy::start(raft[(to - 1) as usize]));
                }
            }
        }
        let brokers = (0..n)
            .map(|i| {
                let me = i as i32 + 1;
                let voters: Vec<String> = (1..=n as i32)
                    .map(|id| {
                        let port = if id == me {
                            raft[i]
                        } else {
                            links[&(me, id)].port()
                        };
                        format!("{id}@127.0.0.1:{port}")
                    })
                    .collect();
                let mut o = options.clone();
                o.extra_args.extend([
                    "--node-id".to_string(),
                    me.to_string(),
                    "--controller-quorum-voters".to_string(),
                    voters.join(","),
                ]);
                Broker::start_on(kafka[i], o)
            })
            .collect();
        Cluster {
            brokers,
            links,
            cluster_ports: raft.to_vec(),
        }
    }

    /// Cuts every link to and from broker `id` (both directions, all peers).
    pub fn isolate(&self, id: i32) {
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.block();
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.unblock();
        }
    }

    /// Waits until every broker reports the same elected controller and all `n`
    /// brokers registered; returns the controller id. A broker registers itself only
    /// after the quorum has a leader, so until then an RF=n CreateTopics is (rightly)
    /// refused with INVALID_REPLICATION_FACTOR.
    pub fn wait_registered(&self) -> i32 {
        let addrs: Vec<String> = self.brokers.iter().map(|b| b.bootstrap()).collect();
        wait_for(
            "all brokers registered under one controller",
            CLUSTER_TIMEOUT,
            || {
                let views: Vec<_> = addrs.iter().map(|a| raw_cluster_view(a)).collect();
                let c = views[0].0;
                (c > 0
                    && views
                        .iter()
                        .all(|(id, b)| *id == c && b.len() == addrs.len()))
                .then_some(c)
            },
        )
    }

    /// The broker with Kafka node id `id`.
    pub fn node(&mut self, id: i32) -> &mut Broker {
        &mut self.brokers[(id - 1) as usize]
    }

    pub fn bootstrap_all(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Metadata v12 over the raw protocol: (controller id, brokers as (id, host, port)).
pub fn raw_cluster_view(bootstrap: &str) -> (i32, Vec<(i32, String, i32)>) {
    let mut wire = Wire::connect(bootstrap);
    let resp = wire.call(&kafka_protocol::messages::MetadataRequest::default(), 12);
    let brokers = resp
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    (resp.controller_id.0, brokers)
}

/// Elections take 1–2 s of silence plus a loaded CI box's scheduling.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(40);

/// (partition → (leader, replicas, isr)) of one topic as one broker reports it.
pub type TopicView = BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)>;

pub fn topic_name_of(s: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(StrBytes::from_string(s.to_string()))
}

/// The topic as broker `bootstrap` itself reports it (raw Metadata v12 to exactly that
/// broker; an rdkafka client may ask any broker it knows). `None` while unknown there.
pub fn topic_view(bootstrap: &str, topic: &str) -> Option<TopicView> {
    let mut wire = Wire::connect(bootstrap);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name_of(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = wire.call(&req, 12);
    let t = &resp.topics[0];
    if t.error_code != 0 {
        return None;
    }
    Some(
        t.partitions
            .iter()
            .map(|p| {
                let ids = |v: &Vec<kafka_protocol::messages::BrokerId>| {
                    v.iter().map(|b| b.0).collect::<Vec<i32>>()
                };
                (
                    p.partition_index,
                    (p.leader_id.0, ids(&p.replica_nodes), ids(&p.isr_nodes)),
                )
            })
            .collect(),
    )
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CreateTopics through `bootstrap` with rdkafka's AdminClient. Retries while the
/// cluster has no metadata leader (request timed out); returns the final outcome.
pub fn create_replicated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rf: i32,
) -> Result<(), RDKafkaErrorCode> {
    create_replicated_with(bootstrap, topic, partitions, rf, &[])
}

/// `create_replicated` with topic configs.
pub fn create_replicated_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) -> Result<(), RDKafkaErrorCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = admin(bootstrap);
    let opts = AdminOptions::new()
        .operation_timeout(Some(CLIENT_TIMEOUT))
        .request_timeout(Some(CLIENT_TIMEOUT));
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(rf));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let results = match rt.block_on(admin.create_topics([&new], &opts)) {
            Ok(r) => r,
            // The quorum may still be electing its first leader.
            Err(e) if Instant::now() < deadline => {
                eprintln!("create_topics: {e}; retrying");
                continue;
            }
            Err(e) => panic!("create_topics request failed: {e}"),
        };
        match &results[0] {
            Ok(_) => return Ok(()),
            Err((_, RDKafkaErrorCode::RequestTimedOut)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err((_, code)) => return Err(*code),
        }
    }
}

/// One record batch (magic 2) with `n` small values.
pub fn record_batch(n: usize) -> Bytes {
    let records: Vec<kafka_protocol::records::Record> = (0..n)
        .map(|i| kafka_protocol::records::Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: i as i64,
            sequence: (i as i32).wrapping_sub(1),
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    encode_uncompressed(&records)
}

/// `records` as one uncompressed v2 record batch (kafka-protocol's encoder).
pub fn encode_uncompressed(records: &[kafka_protocol::records::Record]) -> Bytes {
    let mut buf = BytesMut::new();
    kafka_protocol::records::RecordBatchEncoder::encode(
        &mut buf,
        records,
        &kafka_protocol::records::RecordEncodeOptions {
            version: 2,
            compression: kafka_protocol::records::Compression::None,
        },
    )
    .expect("encode a record batch");
    buf.freeze()
}

/// Produce of one small batch sent to exactly `bootstrap` (no client-side rerouting to
/// another broker): the partition's error code.
pub fn raw_produce_code(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    acks: i16,
    timeout_ms: i32,
) -> i16 {
    raw_produce_with(
        bootstrap,
        topic,
        partition,
        record_batch(3),
        acks,
        timeout_ms,
    )
}

/// The partition error code of a raw Produce (v9, acks=all) of `records`, exactly as
/// given, to `topic`-`partition`.
pub fn raw_produce_records(bootstrap: &str, topic: &str, partition: i32, records: Bytes) -> i16 {
    raw_produce_with(bootstrap, topic, partition, records, -1, 10_000)
}

fn raw_produce_with(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: i16,
    timeout_ms: i32,
) -> i16 {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut wire = Wire::connect(bootstrap);
    wire.set_read_timeout(Duration::from_millis(timeout_ms as u64) + CLIENT_TIMEOUT);
    let produce = kafka_protocol::messages::ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name_of(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    wire.call(&produce, 9).responses[0].partition_responses[0].error_code
}

// ---------------------------------------------------------------------------
// rdkafka clients

/// Client settings every test client shares: IPv4 loopback only, short timeouts.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("log_level", "4");
    c
}

/// A `FutureProducer` with `acks` and extra settings.
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = base_config(bootstrap);
    c.set("message.timeout.ms", "15000")
        .set("request.timeout.ms", "10000")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("create producer")
}

/// A `BaseConsumer` meant for `assign()` only: no group subscribe, no commits.
/// It reports end-of-partition so tests can read "everything" exactly.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = base_config(bootstrap);
    c.set("group.id", "runnel-tests")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "10000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("create consumer")
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    base_config(bootstrap)
        .create()
        .expect("create admin client")
}

/// CreateTopics through the admin API; panics on any error.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new()
        .operation_timeout(Some(CLIENT_TIMEOUT))
        .request_timeout(Some(CLIENT_TIMEOUT));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = tokio::time::timeout(CLIENT_TIMEOUT, admin.create_topics([&topic], &opts))
        .await
        .expect("create_topics timed out")
        .expect("create_topics request failed");
    assert_eq!(results.len(), 1);
    if let Err((topic, code)) = &results[0] {
        panic!("create topic {topic}: {code:?}");
    }
}

/// Blocking variant for tests without a tokio runtime.
pub fn create_topic_blocking(bootstrap: &str, name: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(bootstrap, name, partitions));
}

/// Unique topic names so tests that share nothing never collide.
/// Kafka's placement of a group in `__consumer_offsets`, written here independently of
/// the broker: `Utils.abs(groupId.hashCode()) % partitions` (Java's String.hashCode).
pub fn kafka_offsets_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    (if h == i32::MIN { 0 } else { h.abs() }) % partitions
}

pub fn topic_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Assign `partitions` of `topic` starting at `offset`.
pub fn assign(consumer: &BaseConsumer, topic: &str, partitions: &[i32], offset: rdkafka::Offset) {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, offset).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
}

/// Poll until every assigned partition in `partitions` has reported
/// end-of-partition (after delivering all messages up to the high watermark).
/// Returns all messages in arrival order. Panics on a consumer error or if the
/// end is not reached within `timeout`.
pub fn consume_to_end(
    consumer: &BaseConsumer,
    partitions: &[i32],
    timeout: Duration,
) -> Vec<OwnedMessage> {
    consume_at_least_to_end(consumer, partitions, 0, timeout)
}

/// Like `consume_to_end`, but also keeps polling until at least `n` messages
/// arrived: for records that become visible without an ack to wait for
/// (acks=0, or a consumer tailing concurrent producers). librdkafka reports
/// end-of-partition once per catch-up, so this must be one loop, not
/// `consume_n` followed by `consume_to_end`.
pub fn consume_at_least_to_end(
    consumer: &BaseConsumer,
    partitions: &[i32],
    n: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let mut pending: HashSet<i32> = partitions.iter().copied().collect();
    let mut out = Vec::new();
    while !pending.is_empty() || out.len() < n {
        assert!(
            Instant::now() < deadline,
            "consume: partitions {pending:?} not at end, or fewer than {n} messages, within {timeout:?} ({} so far)",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                // A new message re-opens its partition until the next EOF.
                pending.insert(m.partition());
                out.push(m.detach());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => panic!("consumer error after {} messages: {e:?}", out.len()),
        }
    }
    out
}

/// Poll until exactly `n` messages arrived (ignoring EOF events). Panics on a
/// consumer error or timeout.
pub fn consume_n(consumer: &BaseConsumer, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "consume_n: got {} of {n} messages within {timeout:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(e)) => panic!("consumer error after {} messages: {e:?}", out.len()),
        }
    }
    out
}

/// Wait until the consumer reports EOF for all `partitions` without delivering
/// any message. Used to know an `Offset::End` assignment has been resolved.
pub fn wait_eof_no_messages(consumer: &BaseConsumer, partitions: &[i32], timeout: Duration) {
    let msgs = consume_to_end(consumer, partitions, timeout);
    assert!(
        msgs.is_empty(),
        "expected no messages before EOF, got {}",
        msgs.len()
    );
}

pub fn payload_str(m: &OwnedMessage) -> String {
    String::from_utf8(m.payload().expect("message has a payload").to_vec()).expect("utf-8 payload")
}

/// Produce and consume a few records on a fresh topic with fresh clients:
/// the "broker still serves" check used after every bad-input test.
pub fn assert_broker_serves(bootstrap: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = topic_name("alive");
    create_topic_blocking(bootstrap, &topic, 1);
    let mut c = base_config(bootstrap);
    c.set("message.timeout.ms", "15000").set("acks", "all");
    let p: BaseProducer = c.create().unwrap();
    for i in 0..5 {
        p.send(
            BaseRecord::to(&topic)
                .key("k")
                .payload(&format!("alive-{i}")),
        )
        .expect("enqueue");
    }
    p.flush(CLIENT_TIMEOUT)
        .expect("flush: broker no longer accepts produce");
    let c = consumer(bootstrap, &[]);
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    let got: Vec<String> = msgs.iter().map(payload_str).collect();
    let want: Vec<String> = (0..5).map(|i| format!("alive-{i}")).collect();
    assert_eq!(
        got, want,
        "broker no longer serves produce+consume correctly"
    );
}

/// Fetch partition 0 from offset 0 over the raw protocol and return the
/// compression codec of every stored batch, to show batches are stored as sent.
pub fn stored_batch_codecs(
    bootstrap: &str,
    topic: &str,
) -> Vec<kafka_protocol::records::Compression> {
    let mut wire = Wire::connect(bootstrap);
    let req = kafka_protocol::messages::FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(16 * 1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    topic.to_string(),
                )))
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_current_leader_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(16 * 1024 * 1024),
                ]),
        ]);
    let resp = wire.call(&req, 12);
    assert_eq!(resp.error_code, 0, "fetch top-level error");
    let part = &resp.responses[0].partitions[0];
    assert_eq!(part.error_code, 0, "fetch partition error");
    let mut records: Bytes = part.records.clone().expect("fetch returned records");
    let infos = kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut records)
        .expect("stored batches decode");
    infos.iter().map(|b| b.compression).collect()
}

// ---------------------------------------------------------------------------
// Raw wire client

/// Largest response frame the raw client accepts; a bigger length means the
/// stream is out of sync, not a real response.
pub const WIRE_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What happened when reading from a raw connection.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A full response frame (without the 4-byte length).
    Frame(Bytes),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing within the read timeout.
    TimedOut,
}

/// A minimal blocking Kafka client on a `TcpStream`, encoding with the
/// `kafka-protocol` crate. Every read is bounded by `read_timeout`.
pub struct Wire {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Wire {
    pub fn connect(bootstrap: &str) -> Wire {
        let stream = TcpStream::connect(bootstrap).expect("connect to broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            correlation_id: 0,
        }
    }

    /// A `Wire` over a connection the caller opened (and perhaps already wrote to).
    pub fn from_stream(stream: TcpStream) -> Wire {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Wire {
            stream,
            correlation_id: 0,
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Encode header + body for `R` at `version`, framed. Returns the bytes and correlation id.
    pub fn encode_request<R: Request>(&mut self, req: &R, version: i16) -> (Bytes, i32) {
        self.correlation_id += 1;
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("runnel-tests")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("encode header");
        req.encode(&mut body, version).expect("encode body");
        (frame(&body), correlation_id)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Send `req` at `version` and decode its response at the same version.
    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        let (bytes, correlation_id) = self.encode_request(req, version);
        self.send_raw(&bytes).expect("send request");
        self.recv_response::<R>(version, correlation_id)
    }

    /// Read one response frame and decode it as `R::Response` at `version`.
    pub fn recv_response<R: Request>(&mut self, version: i16, correlation_id: i32) -> R::Response {
        let mut frame = match self.read_frame() {
            ReadOutcome::Frame(f) => f,
            other => panic!(
                "expected a response to api key {} v{version}, got {other:?}",
                R::KEY
            ),
        };
        let api_key = ApiKey::try_from(R::KEY).unwrap();
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .expect("decode response header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "response correlation id"
        );
        let resp = R::Response::decode(&mut frame, version)
            .unwrap_or_else(|e| panic!("decode response to api key {} v{version}: {e:#}", R::KEY));
        assert_eq!(
            frame.remaining(),
            0,
            "trailing bytes after api key {} v{version} response",
            R::KEY
        );
        resp
    }

    /// Read one length-prefixed frame, or report close / timeout.
    pub fn read_frame(&mut self) -> ReadOutcome {
        let mut len = [0u8; 4];
        match read_exact_or_close(&mut self.stream, &mut len) {
            Ok(true) => {}
            Ok(false) => return ReadOutcome::Closed,
            Err(e) if is_timeout(&e) => return ReadOutcome::TimedOut,
            Err(e) => panic!("read frame length: {e}"),
        }
        let n = i32::from_be_bytes(len);
        assert!(
            n >= 0 && (n as usize) <= WIRE_FRAME_BYTES_MAX,
            "response frame length {n} out of range"
        );
        let mut buf = vec![0u8; n as usize];
        match read_exact_or_close(&mut self.stream, &mut buf) {
            Ok(true) => ReadOutcome::Frame(Bytes::from(buf)),
            Ok(false) => ReadOutcome::Closed,
            Err(e) if is_timeout(&e) => ReadOutcome::TimedOut,
            Err(e) => panic!("read frame body: {e}"),
        }
    }

    /// Stop writing; the broker sees EOF.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Prefix `body` with its 4-byte big-endian length.
pub fn frame(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32);
    out.put_slice(body);
    out.freeze()
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Ok(true): filled. Ok(false): peer closed (EOF or reset) before or during the read.
fn read_exact_or_close(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// Network faults

/// A TCP proxy on 127.0.0.1 in front of one port, which a test can cut. Blocking shuts
/// every open connection down and then accepts new ones but forwards nothing (the
/// peer sees a connect that succeeds and then silence, as behind a dropped route) until
/// unblocked. Threads end when the proxy is dropped.
pub struct NetProxy {
    port: u16,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl NetProxy {
    pub fn start(target: u16) -> NetProxy {
        use std::sync::atomic::Ordering::SeqCst;
        use std::sync::{atomic::AtomicBool, Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (b, st, op) = (blocked.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !st.load(SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                if b.load(SeqCst) {
                    // Swallow: read and discard until unblocked or stopped.
                    let (b, st) = (b.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut c = client;
                        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 4096];
                        while b.load(SeqCst) && !st.load(SeqCst) {
                            if let Ok(0) = c.read(&mut buf) {
                                return;
                            }
                        }
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(
                    &([127, 0, 0, 1], target).into(),
                    Duration::from_secs(2),
                ) else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                {
                    let mut o = op.lock().unwrap();
                    o.retain(|s: &TcpStream| s.peer_addr().is_ok());
                    o.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let b = b.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if b.load(SeqCst) || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        NetProxy {
            port,
            blocked,
            stop,
            open,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn block(&self) {
        self.blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn unblock(&self) {
        self.blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.block();
    }
}

/// The batches of `topic`-`partition` in a stopped broker's data dir, as `runnel
/// dump-log --json` lists them: (base offset, last offset, leader epoch, crc).
pub fn dump_partition(data_dir: &Path, topic: &str, partition: i32) -> Vec<(i64, i64, i64, u64)> {
    let dir = data_dir.join("topics").join(format!("{topic}-{partition}"));
    let out = Command::new(runnel_bin())
        .arg("dump-log")
        .arg("--json")
        .arg(&dir)
        .output()
        .expect("run runnel dump-log");
    assert!(
        out.status.success(),
        "dump-log {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump-log JSON");
    v["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| {
            (
                b["base_offset"].as_i64().unwrap(),
                b["last_offset"].as_i64().unwrap(),
                b["leader_epoch"].as_i64().unwrap(),
                b["crc"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What an rdkafka producer's delivery reports said (filled by `AckContext`).
#[derive(Default)]
pub struct Acks {
    /// (partition, offset, payload) in delivery order.
    pub acked: Mutex<Vec<(i32, i64, String)>>,
    /// Delivery errors, as rdkafka words them.
    pub failed: Mutex<Vec<String>>,
    /// Records sent and not reported yet: the sender adds, the report subtracts.
    pub outstanding: AtomicU64,
}

impl Acks {
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn failures(&self) -> usize {
        self.failed.lock().unwrap().len()
    }
}

/// Producer context recording every delivery report into its `Acks`.
pub struct AckContext(pub Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(m) => {
                let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                self.0
                    .acked
                    .lock()
                    .unwrap()
                    .push((m.partition(), m.offset(), payload));
            }
            Err((e, _)) => self.0.failed.lock().unwrap().push(e.to_string()),
        }
    }
}

/// The cluster id broker `bootstrap` reports in Metadata v12 and DescribeCluster v0.
pub fn raw_cluster_id(bootstrap: &str) -> Option<String> {
    let mut wire = Wire::connect(bootstrap);
    let meta = wire.call(&kafka_protocol::messages::MetadataRequest::default(), 12);
    let described = wire.call(
        &kafka_protocol::messages::DescribeClusterRequest::default(),
        0,
    );
    let id = meta.cluster_id.map(|s| s.to_string());
    assert_eq!(
        id.as_deref(),
        Some(described.cluster_id.as_str()),
        "Metadata and DescribeCluster disagree"
    );
    id
}

/// How a `runnel serve` run to its exit ended.
pub struct Exit {
    /// `None`: killed after the time allowed.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `runnel serve ARGS` (admin port off) until it exits, at most `max`, then SIGKILL.
/// `prepare` may adjust the command first (extra env, `pre_exec`).
pub fn serve_to_exit_within(
    args: &[&str],
    max: Duration,
    prepare: impl FnOnce(&mut Command),
) -> Exit {
    use std::io::Read;
    let mut cmd = Command::new(runnel_bin());
    cmd.arg("serve")
        .args(args)
        .env("RUNNEL_ADMIN_LISTEN", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn runnel serve");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for runnel serve") {
            break status.code();
        }
        if started.elapsed() > max {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exit {
        code,
        elapsed: started.elapsed(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
