//! Broker configuration, validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Bytes of io_uring-registered memory per executor. glommio registers it under
/// RLIMIT_MEMLOCK; 2 MiB per core fits the common 8 MiB default on small machines.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 2 << 20;
/// Kafka's `socket.request.max.bytes` default: a frame larger than this closes the
/// connection before any allocation (guards against a bit-flipped or hostile length).
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 * 1024 * 1024;
/// Kafka's `message.max.bytes` default (largest record batch accepted).
pub const MESSAGE_MAX_BYTES_DEFAULT: u32 = 1024 * 1024 + 12;
/// Requests a connection may have in flight before the broker stops reading from it.
pub const CONNECTION_INFLIGHT_MAX: usize = 64;
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// log.retention.check.interval.ms (Kafka's is 5 minutes; retention and compaction
/// are cheap when there is nothing to do).
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// group.min.session.timeout.ms / group.max.session.timeout.ms, Kafka's defaults: the
/// range of session timeouts a joining consumer may ask for.
pub const GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT: i32 = 6_000;
pub const GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT: i32 = 1_800_000;
/// group.initial.rebalance.delay.ms, Kafka's default.
pub const GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT: u64 = 3_000;
/// log.cleaner.dedupe.buffer.size, Kafka's default: bytes of compaction key maps for
/// the whole broker. Kafka divides it among its cleaner threads; every shard compacts
/// one log at a time, so each shard gets an equal share.
pub const LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT: u64 = 128 << 20;
/// offsets.retention.minutes, Kafka's default (7 days): how long a group without
/// members keeps its committed offsets (KIP-211).
pub const OFFSETS_RETENTION_MINUTES_DEFAULT: u32 = 7 * 24 * 60;
/// producer.id.expiration.ms, Kafka's default (1 day): how long a partition keeps an
/// idle idempotent producer's state.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: u64 = 86_400_000;
/// offsets.retention.check.interval.ms, Kafka's default (10 minutes).
pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 600_000;
/// Smallest share of the dedupe buffer a shard may get (about 15 keys of 4 bytes per
/// pass). Compaction still progresses with less, one batch per pass, but a value this
/// small is a mistake (bytes taken for KiB or MiB), not a setting.
pub const DEDUPE_BUFFER_SHARD_BYTES_MIN: u64 = 1024;

/// Upper end of the default `queued.max.request.bytes`: enough for ~18 Fetch responses
/// at Kafka's 55 MiB `fetch.max.bytes`, or ten requests at `socket.request.max.bytes`,
/// in flight at once; buffering more only adds latency.
pub const QUEUED_MAX_REQUEST_BYTES_DEFAULT_MAX: u64 = 1 << 30;
/// The default's share of the memory the broker may use (RAM, or the cgroup's
/// `memory.max` when lower): the rest is for the logs' write buffers and batch cache,
/// indexes, compaction key maps and the page cache of non-O_DIRECT files.
pub const QUEUED_MAX_REQUEST_BYTES_MEMORY_DIVISOR: u64 = 8;
/// Smallest accepted `queued.max.request.bytes`: a smaller budget is a unit mistake.
pub const QUEUED_MAX_REQUEST_BYTES_MIN: i64 = 1 << 20;

/// The default `queued.max.request.bytes`: min(1 GiB, memory / 8), where memory is the
/// machine's RAM or the cgroup's limit if lower (1 GiB when neither can be read).
pub fn queued_max_request_bytes_default() -> i64 {
    let ram = physical_memory_bytes();
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let memory = match (ram, cgroup) {
        (Some(r), Some(c)) => r.min(c),
        (r, c) => r.or(c).unwrap_or(QUEUED_MAX_REQUEST_BYTES_DEFAULT_MAX * 8),
    };
    let bytes = (memory / QUEUED_MAX_REQUEST_BYTES_MEMORY_DIVISOR)
        .min(QUEUED_MAX_REQUEST_BYTES_DEFAULT_MAX)
        .max(QUEUED_MAX_REQUEST_BYTES_MIN as u64);
    bytes as i64
}

fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return None;
    }
    (pages as u64).checked_mul(page as u64)
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Admin HTTP (metrics, health); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Host and port put in Metadata responses.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub node_id: i32,
    pub io_memory_bytes: usize,
    pub auto_create_topics: bool,
    pub num_partitions: u32,
    pub socket_request_max_bytes: usize,
    pub message_max_bytes: u32,
    /// `queued.max.request.bytes`: bytes of requests being handled plus their responses
    /// not yet written, all connections together, before connections stop reading
    /// (`net::memory`); -1: no broker-wide bound (Kafka's default).
    pub queued_max_request_bytes: i64,
    pub connections_max: usize,
    /// A shard whose reactor could not run for longer than this is logged and counted.
    pub stall_threshold_ms: u64,
    /// Also capture and log the stalling task's backtrace (glommio's stall detector).
    pub stall_backtraces: bool,
    /// Log levels in `RUST_LOG` syntax (tracing-subscriber's EnvFilter).
    pub log_filter: String,
    pub log_format: LogFormat,
    pub log_retention_check_interval_ms: u64,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// `None`: a single node (no Raft, the local metadata log). `Some`: a member of a
    /// cluster whose metadata is replicated among `controller.quorum.voters`.
    pub cluster: Option<ClusterConfig>,
    /// `default.replication.factor`: replicas of topics created without one.
    pub default_replication_factor: i16,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long
    /// leaves the in-sync set.
    pub replica_lag_time_max_ms: u64,
    /// `offsets.topic.replication.factor`: replicas of `__consumer_offsets` in a
    /// cluster, capped at the live brokers when it is created.
    pub offsets_topic_replication_factor: i16,
    /// `log.cleaner.dedupe.buffer.size`: bytes of compaction key maps, all shards
    /// together (see `dedupe_buffer_bytes_per_shard`).
    pub log_cleaner_dedupe_buffer_size: u64,
    /// `offsets.retention.minutes`.
    pub offsets_retention_minutes: u32,
    /// `offsets.retention.ms` (Runnel's; overrides the minutes when set, as Kafka's
    /// `log.retention.ms` overrides `log.retention.minutes`): for retentions below a
    /// minute, e.g. in tests.
    pub offsets_retention_ms: Option<u64>,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are removed.
    pub offsets_retention_check_interval_ms: u64,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is
    /// created (afterwards the topic's own count, from the metadata, is what counts).
    pub offsets_topic_num_partitions: u32,
    /// `producer.id.expiration.ms`: a partition forgets an idempotent producer that
    /// wrote nothing to it for this long (when it next snapshots its producer state).
    pub producer_id_expiration_ms: u64,
    /// `controlled.shutdown.enable`: on SIGTERM a cluster broker first moves its
    /// leaderships to other in-sync replicas (`replication::shutdown`).
    pub controlled_shutdown_enable: bool,
    /// `controlled.shutdown.timeout.ms`: how long that may take before the broker
    /// stops anyway (Runnel's; Kafka bounds it by retries × backoff instead).
    pub controlled_shutdown_timeout_ms: u64,
}

/// `runnel serve`'s defaults with one core (the binary's default is every core).
impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9644))),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            data_dir: PathBuf::from("./data"),
            cores: 1,
            node_id: 0,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            auto_create_topics: true,
            num_partitions: 1,
            socket_request_max_bytes: SOCKET_REQUEST_MAX_BYTES_DEFAULT,
            message_max_bytes: MESSAGE_MAX_BYTES_DEFAULT,
            queued_max_request_bytes: queued_max_request_bytes_default(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            stall_threshold_ms: 20,
            stall_backtraces: false,
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            log_retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            group_initial_rebalance_delay_ms: GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            group_min_session_timeout_ms: GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT,
            group_max_session_timeout_ms: GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT,
            cluster: None,
            default_replication_factor: 1,
            replica_lag_time_max_ms: 30_000,
            offsets_topic_replication_factor: 3,
            log_cleaner_dedupe_buffer_size: LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT,
            offsets_retention_minutes: OFFSETS_RETENTION_MINUTES_DEFAULT,
            offsets_retention_ms: None,
            offsets_retention_check_interval_ms: OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            offsets_topic_num_partitions: OFFSETS_TOPIC_NUM_PARTITIONS_DEFAULT,
            producer_id_expiration_ms: PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            controlled_shutdown_enable: true,
            controlled_shutdown_timeout_ms: CONTROLLED_SHUTDOWN_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// offsets.topic.num.partitions, Kafka's default. Partitions are empty until a group
/// commits, and a group's coordinator loads only its own partition.
pub const OFFSETS_TOPIC_NUM_PARTITIONS_DEFAULT: u32 = 50;
/// The most partitions any topic may have (CreateTopics' bound).
pub const OFFSETS_TOPIC_NUM_PARTITIONS_MAX: u32 = 100_000;

/// controlled.shutdown.timeout.ms default: a handover takes well under a second; the
/// bound covers a metadata election in between.
pub const CONTROLLED_SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Upper bound: a stop must not hang for long (systemd's default stop timeout is 90 s).
pub const CONTROLLED_SHUTDOWN_TIMEOUT_MS_MAX: u64 = 60_000;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log.format={s}: must be text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// One member of the metadata quorum (`controller.quorum.voters`: `id@host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    /// The voter's inter-broker (Raft) address.
    pub addr: SocketAddr,
}

/// Cluster membership. Every broker is a voter (Kafka's combined mode): a cluster of
/// three brokers is a quorum of three.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub voters: Vec<Voter>,
    /// Where this broker accepts inter-broker (Raft) connections.
    pub listen: SocketAddr,
}

/// Upper bound on voters: every metadata change waits for a majority of them.
pub const VOTERS_MAX: usize = 64;

/// Parses `controller.quorum.voters`: `1@127.0.0.1:19093,2@127.0.0.1:19094,...`.
pub fn parse_voters(text: &str) -> Result<Vec<Voter>, String> {
    use std::net::ToSocketAddrs;
    let mut voters: Vec<Voter> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("controller.quorum.voters: '{item}' is not id@host:port"))?;
        let id: i32 = id.parse().ok().filter(|id| *id >= 0).ok_or_else(|| {
            format!("controller.quorum.voters: '{id}' is not a node id (0 or more)")
        })?;
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| format!("controller.quorum.voters: {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("controller.quorum.voters: {addr} resolves to no address"))?;
        if voters.iter().any(|v| v.id == id) {
            return Err(format!(
                "controller.quorum.voters: node id {id} listed twice"
            ));
        }
        voters.push(Voter { id, addr });
    }
    if voters.len() > VOTERS_MAX {
        return Err(format!(
            "controller.quorum.voters: at most {VOTERS_MAX} voters"
        ));
    }
    voters.sort_by_key(|v| v.id);
    Ok(voters)
}

impl BrokerConfig {
    /// Each shard's share of `log.cleaner.dedupe.buffer.size`: the bound of the key map
    /// one compaction pass on that shard builds.
    pub fn dedupe_buffer_bytes_per_shard(&self) -> usize {
        let share = self.log_cleaner_dedupe_buffer_size / self.cores.max(1) as u64;
        usize::try_from(share).unwrap_or(usize::MAX)
    }

    /// Each shard's share of `queued.max.request.bytes` (`usize::MAX`: no bound).
    pub fn queued_max_request_bytes_per_shard(&self) -> usize {
        match u64::try_from(self.queued_max_request_bytes) {
            Ok(total) => {
                usize::try_from(total / self.cores.max(1) as u64).map_or(usize::MAX, |s| s.max(1))
            }
            Err(_) => usize::MAX,
        }
    }

    /// How long an Empty group keeps its committed offsets.
    pub fn offsets_retention(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.offsets_retention_ms
                .unwrap_or(u64::from(self.offsets_retention_minutes) * 60_000),
        )
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cores == 0 {
            return Err(format!("cores={}: must be at least 1", self.cores));
        }
        if self.num_partitions == 0 || self.num_partitions > 100_000 {
            return Err(format!(
                "num.partitions={}: must be between 1 and 100000",
                self.num_partitions
            ));
        }
        if self.socket_request_max_bytes < 1024 {
            return Err(format!(
                "socket.request.max.bytes={}: must be at least 1024",
                self.socket_request_max_bytes
            ));
        }
        if self.queued_max_request_bytes != -1
            && self.queued_max_request_bytes < QUEUED_MAX_REQUEST_BYTES_MIN
        {
            return Err(format!(
                "queued.max.request.bytes={}: must be -1 (no bound) or at least {QUEUED_MAX_REQUEST_BYTES_MIN} \
                 (it is the memory for requests and their responses of all connections together)",
                self.queued_max_request_bytes
            ));
        }
        if self.message_max_bytes as usize > self.socket_request_max_bytes {
            return Err(format!(
                "message.max.bytes={} exceeds socket.request.max.bytes={}",
                self.message_max_bytes, self.socket_request_max_bytes
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_filter) {
            return Err(format!(
                "log.level={}: {e} (expected RUST_LOG syntax, e.g. info,runnel::group=debug)",
                self.log_filter
            ));
        }
        if self.log_retention_check_interval_ms < 100 {
            // Each check walks every partition; a zero interval would spin.
            return Err(format!(
                "log.retention.check.interval.ms={}: must be at least 100",
                self.log_retention_check_interval_ms
            ));
        }
        if self.group_min_session_timeout_ms < 1 {
            return Err(format!(
                "group.min.session.timeout.ms={}: must be at least 1",
                self.group_min_session_timeout_ms
            ));
        }
        if self.group_max_session_timeout_ms < self.group_min_session_timeout_ms {
            return Err(format!(
                "group.max.session.timeout.ms={} is below group.min.session.timeout.ms={}",
                self.group_max_session_timeout_ms, self.group_min_session_timeout_ms
            ));
        }
        if self.io_memory_bytes < 64 * 1024 {
            return Err(format!(
                "io.memory.mib={}: must be at least 1",
                self.io_memory_bytes >> 20
            ));
        }
        if let Some(c) = &self.cluster {
            if !c.voters.iter().any(|v| v.id == self.node_id) {
                return Err(format!(
                    "node.id={} is not in controller.quorum.voters (every broker of a cluster is a voter)",
                    self.node_id
                ));
            }
            if c.listen == self.listen {
                return Err(format!(
                    "the cluster listener {} must differ from the Kafka listener",
                    c.listen
                ));
            }
        }
        if self.offsets_topic_replication_factor < 1 {
            return Err(format!(
                "offsets.topic.replication.factor={}: must be at least 1",
                self.offsets_topic_replication_factor
            ));
        }
        let dedupe_min = DEDUPE_BUFFER_SHARD_BYTES_MIN * self.cores.max(1) as u64;
        if self.log_cleaner_dedupe_buffer_size < dedupe_min {
            return Err(format!(
                "log.cleaner.dedupe.buffer.size={}: must be at least {dedupe_min} bytes \
                 ({DEDUPE_BUFFER_SHARD_BYTES_MIN} per shard × {} shards; it is the memory for \
                 compaction key maps of all shards together, Kafka's default is {})",
                self.log_cleaner_dedupe_buffer_size,
                self.cores,
                LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT
            ));
        }
        if self.offsets_retention_minutes < 1 {
            return Err(format!(
                "offsets.retention.minutes={}: must be at least 1",
                self.offsets_retention_minutes
            ));
        }
        if let Some(ms) = self.offsets_retention_ms {
            if ms < 1 || ms > i64::MAX as u64 {
                return Err(format!(
                    "offsets.retention.ms={ms}: must be between 1 and {}",
                    i64::MAX
                ));
            }
        }
        if self.offsets_retention_check_interval_ms < 100 {
            // Each check walks every group of the shard.
            return Err(format!(
                "offsets.retention.check.interval.ms={}: must be at least 100",
                self.offsets_retention_check_interval_ms
            ));
        }
        if !(1..=OFFSETS_TOPIC_NUM_PARTITIONS_MAX).contains(&self.offsets_topic_num_partitions) {
            return Err(format!(
                "offsets.topic.num.partitions={}: must be between 1 and {OFFSETS_TOPIC_NUM_PARTITIONS_MAX}",
                self.offsets_topic_num_partitions
            ));
        }
        if !(1..=i64::MAX as u64).contains(&self.producer_id_expiration_ms) {
            return Err(format!(
                "producer.id.expiration.ms={}: must be between 1 and {}",
                self.producer_id_expiration_ms,
                i64::MAX
            ));
        }
        if !(1..=CONTROLLED_SHUTDOWN_TIMEOUT_MS_MAX).contains(&self.controlled_shutdown_timeout_ms)
        {
            return Err(format!(
                "controlled.shutdown.timeout.ms={}: must be between 1 and {CONTROLLED_SHUTDOWN_TIMEOUT_MS_MAX}",
                self.controlled_shutdown_timeout_ms
            ));
        }
        if self.default_replication_factor < 1 {
            return Err(format!(
                "default.replication.factor={}: must be at least 1",
                self.default_replication_factor
            ));
        }
        Ok(())
    }
}

/// Settings-file keys (Kafka's names where Kafka has one) and the `serve` flag each sets.
pub const FILE_KEYS: &[(&str, &str)] = &[
    ("listeners", "listen"),
    ("advertised.host.name", "advertised-host"),
    ("admin.listen", "admin-listen"),
    ("log.dirs", "data-dir"),
    ("cores", "cores"),
    ("node.id", "node-id"),
    ("io.memory.mib", "io-memory-mib"),
    ("auto.create.topics.enable", "auto-create-topics"),
    ("num.partitions", "num-partitions"),
    ("socket.request.max.bytes", "socket-request-max-bytes"),
    ("message.max.bytes", "message-max-bytes"),
    ("queued.max.request.bytes", "queued-max-request-bytes"),
    ("max.connections", "max-connections"),
    ("stall.threshold.ms", "stall-threshold-ms"),
    ("stall.backtraces", "stall-backtraces"),
    ("log.level", "log"),
    ("log.format", "log-format"),
    (
        "log.retention.check.interval.ms",
        "log-retention-check-interval-ms",
    ),
    (
        "group.initial.rebalance.delay.ms",
        "group-initial-rebalance-delay-ms",
    ),
    (
        "group.min.session.timeout.ms",
        "group-min-session-timeout-ms",
    ),
    (
        "group.max.session.timeout.ms",
        "group-max-session-timeout-ms",
    ),
    ("advertised.port", "advertised-port"),
    ("controller.quorum.voters", "controller-quorum-voters"),
    ("cluster.listen", "cluster-listen"),
    ("default.replication.factor", "default-replication-factor"),
    ("replica.lag.time.max.ms", "replica-lag-time-max-ms"),
    (
        "offsets.topic.replication.factor",
        "offsets-topic-replication-factor",
    ),
    (
        "log.cleaner.dedupe.buffer.size",
        "log-cleaner-dedupe-buffer-size",
    ),
    ("offsets.retention.minutes", "offsets-retention-minutes"),
    ("offsets.retention.ms", "offsets-retention-ms"),
    (
        "offsets.retention.check.interval.ms",
        "offsets-retention-check-interval-ms",
    ),
    (
        "offsets.topic.num.partitions",
        "offsets-topic-num-partitions",
    ),
    ("producer.id.expiration.ms", "producer-id-expiration-ms"),
    ("controlled.shutdown.enable", "controlled-shutdown-enable"),
    (
        "controlled.shutdown.timeout.ms",
        "controlled-shutdown-timeout-ms",
    ),
];

/// Reads a TOML settings file into (flag, value) pairs. Dotted keys may be written
/// quoted (`"num.partitions" = 4`) or as TOML's nested keys (`num.partitions = 4`);
/// both flatten to Kafka's name. Unknown keys are refused with the key named.
pub fn parse_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut flat = Vec::new();
    flatten("", &toml::Value::Table(table), &mut flat);
    flat.into_iter()
        .map(|(key, value)| {
            let flag = FILE_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, f)| f.to_string())
                .ok_or_else(|| format!("unknown setting '{key}' (known: {})", known_keys()))?;
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{key} = {other}: expected a string, integer or boolean"
                    ))
                }
            };
            Ok((flag, value))
        })
        .collect()
}

fn known_keys() -> String {
    FILE_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => out.push((prefix.to_string(), v.clone())),
    }
}

/// The effective configuration as a settings file (`runnel serve --print-config`).
pub fn render_toml(c: &BrokerConfig) -> String {
    let admin = c
        .admin_listen
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    format!(
        "\"listeners\" = \"{}\"\n\"advertised.host.name\" = \"{}\"\n\"admin.listen\" = \"{admin}\"\n\"log.dirs\" = \"{}\"\n\"cores\" = {}\n\"node.id\" = {}\n\"io.memory.mib\" = {}\n\"auto.create.topics.enable\" = {}\n\"num.partitions\" = {}\n\"socket.request.max.bytes\" = {}\n\"message.max.bytes\" = {}\n\"queued.max.request.bytes\" = {}\n\"max.connections\" = {}\n\"stall.threshold.ms\" = {}\n\"stall.backtraces\" = {}\n\"log.level\" = \"{}\"\n\"log.format\" = \"{}\"\n\"log.retention.check.interval.ms\" = {}\n\"group.initial.rebalance.delay.ms\" = {}\n\"group.min.session.timeout.ms\" = {}\n\"group.max.session.timeout.ms\" = {}\n",
        c.listen,
        c.advertised_host,
        c.data_dir.display(),
        c.cores,
        c.node_id,
        c.io_memory_bytes >> 20,
        c.auto_create_topics,
        c.num_partitions,
        c.socket_request_max_bytes,
        c.message_max_bytes,
        c.queued_max_request_bytes,
        c.connections_max,
        c.stall_threshold_ms,
        c.stall_backtraces,
        c.log_filter,
        c.log_format,
        c.log_retention_check_interval_ms,
        c.group_initial_rebalance_delay_ms,
        c.group_min_session_timeout_ms,
        c.group_max_session_timeout_ms,
    ) + &render_cluster(c)
}

fn render_cluster(c: &BrokerConfig) -> String {
    let mut out = format!(
        "\"advertised.port\" = {}\n\"default.replication.factor\" = {}\n\"replica.lag.time.max.ms\" = {}\n\"offsets.topic.replication.factor\" = {}\n\"log.cleaner.dedupe.buffer.size\" = {}\n\"offsets.retention.minutes\" = {}\n\"offsets.retention.check.interval.ms\" = {}\n\"offsets.topic.num.partitions\" = {}\n\"producer.id.expiration.ms\" = {}\n\"controlled.shutdown.enable\" = {}\n\"controlled.shutdown.timeout.ms\" = {}\n",
        c.advertised_port,
        c.default_replication_factor,
        c.replica_lag_time_max_ms,
        c.offsets_topic_replication_factor,
        c.log_cleaner_dedupe_buffer_size,
        c.offsets_retention_minutes,
        c.offsets_retention_check_interval_ms,
        c.offsets_topic_num_partitions,
        c.producer_id_expiration_ms,
        c.controlled_shutdown_enable,
        c.controlled_shutdown_timeout_ms,
    );
    // The effective retention: reads back to the same value whether it came from the
    // minutes or the milliseconds.
    out += &format!(
        "\"offsets.retention.ms\" = {}\n",
        c.offsets_retention().as_millis()
    );
    // A single node prints both empty, so the output reads back as a settings file.
    let (voters, listen) = match &c.cluster {
        Some(cluster) => (
            cluster
                .voters
                .iter()
                .map(|v| format!("{}@{}", v.id, v.addr))
                .collect::<Vec<_>>()
                .join(","),
            cluster.listen.to_string(),
        ),
        None => (String::new(), String::new()),
    };
    out += &format!(
        "\"controller.quorum.voters\" = \"{voters}\"\n\"cluster.listen\" = \"{listen}\"\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_nested_dotted_keys_map_to_flags() {
        let got = parse_toml("\"num.partitions\" = 4\nauto.create.topics.enable = false\nlisteners = \"127.0.0.1:9\"\n").unwrap();
        assert!(got.contains(&("num-partitions".into(), "4".into())));
        assert!(got.contains(&("auto-create-topics".into(), "false".into())));
        assert!(got.contains(&("listen".into(), "127.0.0.1:9".into())));
    }

    #[test]
    fn the_example_settings_file_lists_every_key() {
        let example = include_str!("../runnel.toml.example");
        for (key, _) in FILE_KEYS {
            assert!(
                example.contains(&format!("\"{key}\" =")),
                "runnel.toml.example lacks {key}"
            );
        }
    }

    #[test]
    fn voters_parse_kafka_style_and_refuse_bad_entries() {
        let v = parse_voters("2@127.0.0.1:9002, 1@127.0.0.1:9001").unwrap();
        assert_eq!(v.iter().map(|v| v.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(v[0].addr, "127.0.0.1:9001".parse().unwrap());
        assert!(parse_voters("1@127.0.0.1:1,1@127.0.0.1:2")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_voters("x@127.0.0.1:1").is_err());
        assert!(parse_voters("127.0.0.1:1").is_err());
        assert!(parse_voters("").unwrap().is_empty());
    }

    #[test]
    fn the_dedupe_buffer_is_shared_by_the_shards_and_refused_below_a_kib_each() {
        let c = BrokerConfig {
            cores: 4,
            ..BrokerConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.dedupe_buffer_bytes_per_shard(), 32 << 20);
        let small = BrokerConfig {
            log_cleaner_dedupe_buffer_size: 4 * 1024 - 1,
            ..c.clone()
        };
        let e = small.validate().unwrap_err();
        assert!(
            e.starts_with("log.cleaner.dedupe.buffer.size=4095: must be at least 4096"),
            "{e}"
        );
        let just = BrokerConfig {
            log_cleaner_dedupe_buffer_size: 4 * 1024,
            ..c
        };
        assert!(just.validate().is_ok());
        assert_eq!(just.dedupe_buffer_bytes_per_shard(), 1024);
    }

    #[test]
    fn the_request_memory_budget_defaults_from_memory_and_is_split_among_shards() {
        let d = queued_max_request_bytes_default();
        assert!((QUEUED_MAX_REQUEST_BYTES_MIN..=1 << 30).contains(&d), "{d}");
        let c = BrokerConfig {
            cores: 4,
            queued_max_request_bytes: 64 << 20,
            ..BrokerConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.queued_max_request_bytes_per_shard(), 16 << 20);
        let unbounded = BrokerConfig {
            queued_max_request_bytes: -1,
            ..c.clone()
        };
        assert!(unbounded.validate().is_ok());
        assert_eq!(unbounded.queued_max_request_bytes_per_shard(), usize::MAX);
        let small = BrokerConfig {
            queued_max_request_bytes: 1000,
            ..c
        };
        let e = small.validate().unwrap_err();
        assert!(
            e.starts_with("queued.max.request.bytes=1000: must be"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused_by_name() {
        let e = parse_toml("\"num.partitons\" = 4").unwrap_err();
        assert!(e.contains("num.partitons"), "{e}");
        let e = parse_toml("cores = [1, 2]").unwrap_err();
        assert!(e.contains("cores"), "{e}");
    }
}
