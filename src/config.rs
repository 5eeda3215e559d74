//! Broker configuration, validated once at start.
//!
//! Every setting is declared once, in the `settings!` table below. Flags and `RUNNEL_*`
//! variables (through clap) and the settings file each fill a `Settings`; layered
//! (flag, then variable, then file) and merged over the defaults they make the
//! `Effective` settings, which `Effective::resolve` turns into the `BrokerConfig` the
//! broker runs with. A new setting is one table entry, its `BrokerConfig` field and the
//! line of `resolve` that sets it (the compiler asks for both), and its line in
//! runnel.toml.example (a test asks for that).

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::{RangeFrom, RangeInclusive};
use std::path::{Path, PathBuf};

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
        Settings::default()
            .effective()
            .and_then(|mut settings| settings.resolve(1))
            .expect("the default settings are valid")
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

    /// The checks a single setting's declared range cannot make: settings bounding each
    /// other or scaled by the shard count, and values with a syntax of their own.
    pub fn validate(&self) -> Result<(), String> {
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
        if self.group_max_session_timeout_ms < self.group_min_session_timeout_ms {
            return Err(format!(
                "group.max.session.timeout.ms={} is below group.min.session.timeout.ms={}",
                self.group_max_session_timeout_ms, self.group_min_session_timeout_ms
            ));
        }
        if let Some(c) = &self.cluster {
            if !c.voters.iter().any(|v| v.id == self.node_id) {
                return Err(not_a_voter(self.node_id));
            }
            if c.listen == self.listen {
                return Err(format!(
                    "the cluster listener {} must differ from the Kafka listener",
                    c.listen
                ));
            }
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
        Ok(())
    }

    /// Locked memory one shard's io_uring buffers take.
    fn memlock_per_shard_bytes(&self) -> u64 {
        (self.io_memory_bytes as u64)
            .next_multiple_of(4096)
            .max(GLOMMIO_IO_MEMORY_MIN_BYTES)
    }

    /// Refuses to start when RLIMIT_MEMLOCK cannot hold every shard's io_uring memory,
    /// naming the exact limit to set: past it shards fail to start (or, with
    /// registration refused, run on slower unregistered buffers) and the operator sees
    /// no reason.
    pub fn check_memlock(&self) -> Result<(), String> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and has no other effect.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
            || lim.rlim_cur == libc::RLIM_INFINITY
        {
            return Ok(());
        }
        let have = lim.rlim_cur;
        let per_shard = self.memlock_per_shard_bytes();
        let need = (per_shard * self.cores as u64).max(GLOMMIO_MEMLOCK_FLOOR_BYTES);
        // The kernel does not count locked memory against the limit for CAP_IPC_LOCK
        // (root), but glommio checks its floor for everyone.
        let enough = if has_cap_ipc_lock() {
            have >= GLOMMIO_MEMLOCK_FLOOR_BYTES
        } else {
            have >= need
        };
        if enough {
            return Ok(());
        }
        let shards_that_fit = have / per_shard;
        let need_kib = need.div_ceil(1024);
        Err(format!(
            "{} shards × {} KiB of io_uring memory need {need_kib} KiB of locked memory, but \
             the limit (ulimit -l) is {} KiB. Raise it: `ulimit -l {need_kib}` in the shell that \
             starts the broker, `LimitMEMLOCK={need}` in its systemd unit, or a memlock line in \
             /etc/security/limits.conf; or lower --cores (at most {shards_that_fit} fit now) or \
             --io-memory-mib.",
            self.cores,
            per_shard >> 10,
            have >> 10,
        ))
    }
}

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK, whoever runs it.
const GLOMMIO_MEMLOCK_FLOOR_BYTES: u64 = 512 << 10;
/// glommio registers at least this much io memory per executor.
const GLOMMIO_IO_MEMORY_MIN_BYTES: u64 = 64 << 10;

/// Whether the kernel lets this process lock memory past RLIMIT_MEMLOCK.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Declares every broker setting once: its settings-file key (Kafka's name where Kafka
/// has one), its `serve` flag (the field's name), its `RUNNEL_*` variable, its type, its
/// default and the values it accepts. A setting without a default is derived from
/// others or from the machine in `Effective::resolve`. From this come `Settings` (what
/// one source gives: flags and variables through clap, or the file), `Effective`
/// (sources merged over the defaults), `FILE_KEYS`, the range checks, the defaults in
/// `--help` and `--print-config`'s output.
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $key:literal => $field:ident: $ty:ty $(= $default:expr)?, env $env:literal
            $(, valid $valid:expr)?;
    )*) => {
        /// What one source sets: `None` where it says nothing, so that the sources can
        /// be layered (`or`) before the defaults fill the rest (`effective`).
        #[derive(clap::Args, Clone, Debug, Default, PartialEq)]
        pub struct Settings {
            $(
                $(#[$attr])*
                #[arg(long, env = $env)]
                pub $field: Option<$ty>,
            )*
        }

        /// Every source merged over the defaults; `Option` where the setting has none.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Effective {
            $(pub $field: settings!(@type $ty $(, $default)?),)*
        }

        /// Settings-file keys and the environment variable that sets each.
        pub const FILE_KEYS: &[(&str, &str)] = &[$(($key, $env)),*];

        impl Settings {
            /// This source's values, and `lower`'s where this one says nothing.
            pub fn or(self, lower: Settings) -> Settings {
                Settings { $($field: self.$field.or(lower.$field),)* }
            }

            /// Checks each given value against its declared range, then fills in the
            /// defaults.
            pub fn effective(self) -> Result<Effective, String> {
                $($(
                    if let Some(value) = &self.$field {
                        check_range($key, value, $valid)?;
                    }
                )?)*
                Ok(Effective {
                    $($field: settings!(@or_default self.$field $(, $default)?),)*
                })
            }

            /// Sets the setting under file key `key` from its text; `None`: no such key.
            fn set(&mut self, key: &str, text: &str) -> Option<Result<(), String>> {
                match key {
                    $($key => Some(if self.$field.is_some() {
                        Err(format!("{key} is set twice"))
                    } else {
                        text.parse::<$ty>()
                            .map(|value| self.$field = Some(value))
                            .map_err(|e| format!("{key} = {text:?}: invalid value ({e})"))
                    }),)*
                    _ => None,
                }
            }

            /// `serve`'s command with each default shown in its flag's help, as clap
            /// shows defaults it holds itself (here they must stay out of the parsed
            /// values, or they would hide the file's).
            pub fn with_defaults_in_help(mut serve: clap::Command) -> clap::Command {
                $($(
                    let default: $ty = $default;
                    serve = serve.mut_arg(stringify!($field), |arg| {
                        help_with_default(arg, &SettingValue::plain(&default))
                    });
                )?)*
                serve
            }
        }

        impl Effective {
            /// The settings as a settings file, one `"key" = value` line each.
            pub fn render_toml(&self) -> String {
                let mut out = String::new();
                $(out += &format!("\"{}\" = {}\n", $key, SettingValue::toml(&self.$field));)*
                out
            }
        }
    };
    (@type $ty:ty, $default:expr) => { $ty };
    (@type $ty:ty) => { Option<$ty> };
    (@or_default $value:expr, $default:expr) => { $value.unwrap_or_else(|| $default) };
    (@or_default $value:expr) => { $value };
}

settings! {
    /// Kafka listener address (host:port).
    "listeners" => listen: String = "127.0.0.1:9092".into(), env "RUNNEL_LISTEN";
    /// Admin HTTP address for /metrics and /health ("off" disables it).
    "admin.listen" => admin_listen: String = "127.0.0.1:9644".into(), env "RUNNEL_ADMIN_LISTEN";
    /// Host advertised to clients in Metadata (default: the listen host).
    "advertised.host.name" => advertised_host: String, env "RUNNEL_ADVERTISED_HOST";
    /// Directory for segments and the metadata log.
    "log.dirs" => data_dir: PathBuf = "./data".into(), env "RUNNEL_DATA_DIR";
    /// Shards (pinned cores); default: all cores.
    "cores" => cores: usize, env "RUNNEL_CORES", valid 1..;
    /// node.id: this broker's id (in a cluster, its id in controller.quorum.voters).
    "node.id" => node_id: i32 = 0, env "RUNNEL_NODE_ID";
    /// io_uring-registered memory per shard in MiB (counts against `ulimit -l`).
    "io.memory.mib" => io_memory_mib: u64 = (IO_MEMORY_BYTES_DEFAULT >> 20) as u64,
        env "RUNNEL_IO_MEMORY_MIB", valid 1..;
    /// auto.create.topics.enable
    "auto.create.topics.enable" => auto_create_topics: bool = true,
        env "RUNNEL_AUTO_CREATE_TOPICS";
    /// num.partitions: partitions of auto-created topics.
    "num.partitions" => num_partitions: u32 = 1, env "RUNNEL_NUM_PARTITIONS",
        valid 1..=OFFSETS_TOPIC_NUM_PARTITIONS_MAX;
    /// socket.request.max.bytes
    "socket.request.max.bytes" => socket_request_max_bytes: usize =
        SOCKET_REQUEST_MAX_BYTES_DEFAULT, env "RUNNEL_SOCKET_REQUEST_MAX_BYTES", valid 1024..;
    /// message.max.bytes
    "message.max.bytes" => message_max_bytes: u32 = MESSAGE_MAX_BYTES_DEFAULT,
        env "RUNNEL_MESSAGE_MAX_BYTES";
    /// queued.max.request.bytes: bytes of requests being handled plus their responses
    /// not yet written, all connections together; past it connections stop reading
    /// new requests and Fetch responses shrink. -1: no bound. Default: min(1 GiB,
    /// memory / 8).
    #[arg(allow_hyphen_values = true)]
    "queued.max.request.bytes" => queued_max_request_bytes: i64,
        env "RUNNEL_QUEUED_MAX_REQUEST_BYTES";
    /// max.connections
    "max.connections" => max_connections: usize = CONNECTIONS_MAX_DEFAULT,
        env "RUNNEL_MAX_CONNECTIONS";
    /// Log (and count in runnel_shard_stalls_total) a shard that could not serve its
    /// I/O and timers for longer than this (ms): a task held it, or the OS did.
    "stall.threshold.ms" => stall_threshold_ms: u64 = 20, env "RUNNEL_STALL_THRESHOLD_MS";
    /// Also log the stalling task's backtrace. The first one loads the binary's debug
    /// info: the shard stalls for it, and the process keeps ~200 MiB more memory.
    "stall.backtraces" => stall_backtraces: bool = false, env "RUNNEL_STALL_BACKTRACES";
    /// Log levels, RUST_LOG syntax: a default and per-module levels,
    /// e.g. "info,runnel::group=debug".
    "log.level" => log: String = "info".into(), env "RUNNEL_LOG";
    /// Log line format: text or json (one JSON object per line).
    "log.format" => log_format: LogFormat = LogFormat::Text, env "RUNNEL_LOG_FORMAT";
    /// log.retention.check.interval.ms: how often retention and compaction run.
    // Each check walks every partition; a zero interval would spin.
    "log.retention.check.interval.ms" => log_retention_check_interval_ms: u64 =
        RETENTION_CHECK_INTERVAL_MS_DEFAULT, env "RUNNEL_LOG_RETENTION_CHECK_INTERVAL_MS",
        valid 100..;
    /// group.initial.rebalance.delay.ms: how long a new group waits for more members
    /// before its first rebalance.
    "group.initial.rebalance.delay.ms" => group_initial_rebalance_delay_ms: u64 =
        GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT, env "RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS";
    /// group.min.session.timeout.ms: shortest session timeout a consumer may ask for.
    "group.min.session.timeout.ms" => group_min_session_timeout_ms: i32 =
        GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT, env "RUNNEL_GROUP_MIN_SESSION_TIMEOUT_MS",
        valid 1..;
    /// group.max.session.timeout.ms: longest session timeout a consumer may ask for.
    "group.max.session.timeout.ms" => group_max_session_timeout_ms: i32 =
        GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT, env "RUNNEL_GROUP_MAX_SESSION_TIMEOUT_MS";
    /// Port advertised to clients in Metadata (default: the listen port).
    "advertised.port" => advertised_port: u16, env "RUNNEL_ADVERTISED_PORT";
    /// controller.quorum.voters: `id@host:port,...` (the voters' cluster listeners).
    /// Empty: a single node. Every broker of a cluster is a voter.
    "controller.quorum.voters" => controller_quorum_voters: String = String::new(),
        env "RUNNEL_CONTROLLER_QUORUM_VOTERS";
    /// Inter-broker (Raft) listener; default: this node's address in the voters.
    "cluster.listen" => cluster_listen: String, env "RUNNEL_CLUSTER_LISTEN";
    /// default.replication.factor
    "default.replication.factor" => default_replication_factor: i16 = 1,
        env "RUNNEL_DEFAULT_REPLICATION_FACTOR", valid 1..;
    /// replica.lag.time.max.ms
    "replica.lag.time.max.ms" => replica_lag_time_max_ms: u64 = 30_000,
        env "RUNNEL_REPLICA_LAG_TIME_MAX_MS";
    /// offsets.topic.replication.factor (capped at the live brokers when created)
    "offsets.topic.replication.factor" => offsets_topic_replication_factor: i16 = 3,
        env "RUNNEL_OFFSETS_TOPIC_REPLICATION_FACTOR", valid 1..;
    /// log.cleaner.dedupe.buffer.size: bytes of compaction key maps, all shards
    /// together (each gets an equal share); more keys than fit take several passes.
    "log.cleaner.dedupe.buffer.size" => log_cleaner_dedupe_buffer_size: u64 =
        LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT, env "RUNNEL_LOG_CLEANER_DEDUPE_BUFFER_SIZE";
    /// offsets.retention.minutes: a group without members keeps its committed offsets
    /// this long after its last member left (KIP-211).
    "offsets.retention.minutes" => offsets_retention_minutes: u32 =
        OFFSETS_RETENTION_MINUTES_DEFAULT, env "RUNNEL_OFFSETS_RETENTION_MINUTES", valid 1..;
    /// offsets.retention.ms: the same in milliseconds; overrides the minutes when given.
    "offsets.retention.ms" => offsets_retention_ms: u64, env "RUNNEL_OFFSETS_RETENTION_MS",
        valid 1..=i64::MAX as u64;
    /// offsets.retention.check.interval.ms: how often expired offsets are removed.
    // Each check walks every group of the shard.
    "offsets.retention.check.interval.ms" => offsets_retention_check_interval_ms: u64 =
        OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT,
        env "RUNNEL_OFFSETS_RETENTION_CHECK_INTERVAL_MS", valid 100..;
    /// offsets.topic.num.partitions: partitions of __consumer_offsets when created.
    "offsets.topic.num.partitions" => offsets_topic_num_partitions: u32 =
        OFFSETS_TOPIC_NUM_PARTITIONS_DEFAULT, env "RUNNEL_OFFSETS_TOPIC_NUM_PARTITIONS",
        valid 1..=OFFSETS_TOPIC_NUM_PARTITIONS_MAX;
    /// producer.id.expiration.ms: how long a partition keeps an idle idempotent
    /// producer's state.
    "producer.id.expiration.ms" => producer_id_expiration_ms: u64 =
        PRODUCER_ID_EXPIRATION_MS_DEFAULT, env "RUNNEL_PRODUCER_ID_EXPIRATION_MS",
        valid 1..=i64::MAX as u64;
    /// controlled.shutdown.enable: on SIGTERM a cluster broker first moves its
    /// partition leaderships to other in-sync replicas.
    "controlled.shutdown.enable" => controlled_shutdown_enable: bool = true,
        env "RUNNEL_CONTROLLED_SHUTDOWN_ENABLE";
    /// controlled.shutdown.timeout.ms: how long that handover may take.
    "controlled.shutdown.timeout.ms" => controlled_shutdown_timeout_ms: u64 =
        CONTROLLED_SHUTDOWN_TIMEOUT_MS_DEFAULT, env "RUNNEL_CONTROLLED_SHUTDOWN_TIMEOUT_MS",
        valid 1..=CONTROLLED_SHUTDOWN_TIMEOUT_MS_MAX;
}

impl Effective {
    /// Builds the broker's configuration and checks it, then fills in the settings
    /// derived from others or from the machine (`cpus`: its cores), so that `self` holds
    /// every value in effect: what `--print-config` prints, and reads back the same.
    pub fn resolve(&mut self, cpus: usize) -> Result<BrokerConfig, String> {
        let listen = socket_addr("listen", &self.listen)?;
        let admin_listen = match self.admin_listen.as_str() {
            "off" | "" => None,
            s => Some(socket_addr("admin-listen", s)?),
        };
        let voters = parse_voters(&self.controller_quorum_voters)?;
        let cluster_listen = self.cluster_listen.as_deref().filter(|s| !s.is_empty());
        let cluster = if voters.is_empty() {
            if cluster_listen.is_some() {
                return Err("cluster-listen needs controller.quorum.voters".into());
            }
            None
        } else {
            let listen = match cluster_listen {
                Some(s) => socket_addr("cluster-listen", s)?,
                None => voters
                    .iter()
                    .find(|v| v.id == self.node_id)
                    .map(|v| v.addr)
                    .ok_or_else(|| not_a_voter(self.node_id))?,
            };
            Some(ClusterConfig { voters, listen })
        };
        let config = BrokerConfig {
            listen,
            admin_listen,
            advertised_host: self.advertised_host.clone().unwrap_or_else(|| {
                if listen.ip().is_unspecified() {
                    "127.0.0.1".into()
                } else {
                    listen.ip().to_string()
                }
            }),
            advertised_port: self.advertised_port.unwrap_or(listen.port()),
            data_dir: self.data_dir.clone(),
            cores: self.cores.unwrap_or(cpus),
            node_id: self.node_id,
            io_memory_bytes: (self.io_memory_mib as usize) << 20,
            auto_create_topics: self.auto_create_topics,
            num_partitions: self.num_partitions,
            socket_request_max_bytes: self.socket_request_max_bytes,
            message_max_bytes: self.message_max_bytes,
            queued_max_request_bytes: self
                .queued_max_request_bytes
                .unwrap_or_else(queued_max_request_bytes_default),
            connections_max: self.max_connections,
            stall_threshold_ms: self.stall_threshold_ms,
            stall_backtraces: self.stall_backtraces,
            log_filter: self.log.clone(),
            log_format: self.log_format,
            log_retention_check_interval_ms: self.log_retention_check_interval_ms,
            group_initial_rebalance_delay_ms: self.group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms: self.group_min_session_timeout_ms,
            group_max_session_timeout_ms: self.group_max_session_timeout_ms,
            cluster,
            default_replication_factor: self.default_replication_factor,
            replica_lag_time_max_ms: self.replica_lag_time_max_ms,
            offsets_topic_replication_factor: self.offsets_topic_replication_factor,
            log_cleaner_dedupe_buffer_size: self.log_cleaner_dedupe_buffer_size,
            offsets_retention_minutes: self.offsets_retention_minutes,
            offsets_retention_ms: self.offsets_retention_ms,
            offsets_retention_check_interval_ms: self.offsets_retention_check_interval_ms,
            offsets_topic_num_partitions: self.offsets_topic_num_partitions,
            producer_id_expiration_ms: self.producer_id_expiration_ms,
            controlled_shutdown_enable: self.controlled_shutdown_enable,
            controlled_shutdown_timeout_ms: self.controlled_shutdown_timeout_ms,
        };
        config.validate()?;
        self.listen = config.listen.to_string();
        self.admin_listen = config
            .admin_listen
            .map_or_else(|| "off".into(), |a| a.to_string());
        self.advertised_host = Some(config.advertised_host.clone());
        self.advertised_port = Some(config.advertised_port);
        self.cores = Some(config.cores);
        self.queued_max_request_bytes = Some(config.queued_max_request_bytes);
        // The retention in effect, whether it came from the minutes or the milliseconds.
        self.offsets_retention_ms =
            Some(u64::try_from(config.offsets_retention().as_millis()).unwrap_or(u64::MAX));
        (self.controller_quorum_voters, self.cluster_listen) = match &config.cluster {
            Some(c) => (
                c.voters
                    .iter()
                    .map(|v| format!("{}@{}", v.id, v.addr))
                    .collect::<Vec<_>>()
                    .join(","),
                Some(c.listen.to_string()),
            ),
            None => (String::new(), None),
        };
        Ok(config)
    }
}

fn socket_addr(name: &str, text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("{name}={text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name}={text}: resolves to no address"))
}

fn not_a_voter(node_id: i32) -> String {
    format!(
        "node.id={node_id} is not in controller.quorum.voters (every broker of a cluster is a voter)"
    )
}

/// The values a setting's declaration accepts (`valid`).
trait Bounds<T> {
    fn allows(&self, value: &T) -> bool;
    fn describe(&self) -> String;
}

impl<T: PartialOrd + Display> Bounds<T> for RangeFrom<T> {
    fn allows(&self, value: &T) -> bool {
        self.contains(value)
    }
    fn describe(&self) -> String {
        format!("at least {}", self.start)
    }
}

impl<T: PartialOrd + Display> Bounds<T> for RangeInclusive<T> {
    fn allows(&self, value: &T) -> bool {
        self.contains(value)
    }
    fn describe(&self) -> String {
        format!("between {} and {}", self.start(), self.end())
    }
}

fn check_range<T: Display>(key: &str, value: &T, bounds: impl Bounds<T>) -> Result<(), String> {
    if bounds.allows(value) {
        Ok(())
    } else {
        Err(format!("{key}={value}: must be {}", bounds.describe()))
    }
}

/// How a setting's value is written: plainly in `--help`, as a TOML value in a settings
/// file.
trait SettingValue {
    fn plain(&self) -> String;
    fn toml(&self) -> String {
        self.plain()
    }
}

macro_rules! setting_value_as_displayed {
    ($($ty:ty),*) => {$(
        impl SettingValue for $ty {
            fn plain(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
setting_value_as_displayed!(bool, i16, i32, i64, u16, u32, u64, usize);

impl SettingValue for String {
    fn plain(&self) -> String {
        self.clone()
    }
    fn toml(&self) -> String {
        toml::Value::String(self.clone()).to_string()
    }
}

impl SettingValue for PathBuf {
    fn plain(&self) -> String {
        self.display().to_string()
    }
    fn toml(&self) -> String {
        self.plain().toml()
    }
}

impl SettingValue for LogFormat {
    fn plain(&self) -> String {
        self.to_string()
    }
    fn toml(&self) -> String {
        self.plain().toml()
    }
}

/// Unset is written as an empty string, which reads back as unset for `cluster.listen`,
/// the one setting `Effective::resolve` may leave unset.
impl<T: SettingValue> SettingValue for Option<T> {
    fn plain(&self) -> String {
        self.as_ref().map_or_else(String::new, T::plain)
    }
    fn toml(&self) -> String {
        self.as_ref().map_or_else(|| "\"\"".into(), T::toml)
    }
}

fn help_with_default(arg: clap::Arg, default: &str) -> clap::Arg {
    if default.is_empty() {
        return arg;
    }
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let long = arg.get_long_help().map(ToString::to_string);
    let arg = arg.help(format!("{help} [default: {default}]"));
    match long {
        Some(long) => arg.long_help(format!("{long}\n\n[default: {default}]")),
        None => arg,
    }
}

/// The settings file: `path`, or else `./runnel.toml` if it exists. Errors name the file.
pub fn read_settings_file(path: Option<&Path>) -> Result<Settings, String> {
    let path = match path {
        Some(p) => p,
        None if Path::new("runnel.toml").exists() => Path::new("runnel.toml"),
        None => return Ok(Settings::default()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a TOML settings file. Dotted keys may be written quoted (`"num.partitions" = 4`)
/// or as TOML's nested keys (`num.partitions = 4`); both flatten to Kafka's name. Values
/// are parsed from their text, as flags are, so `"4"` and `4` are the same. Unknown keys
/// are refused with the key named.
pub fn parse_toml(text: &str) -> Result<Settings, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut flat = Vec::new();
    flatten("", &toml::Value::Table(table), &mut flat);
    let mut settings = Settings::default();
    for (key, value) in flat {
        if !FILE_KEYS.iter().any(|(k, _)| *k == key) {
            return Err(format!("unknown setting '{key}' (known: {})", known_keys()));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{key} = {other}: expected a string, integer or boolean"
                ))
            }
        };
        settings.set(&key, &text).expect("a known key")?;
    }
    Ok(settings)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_nested_dotted_keys_fill_the_same_settings() {
        let got = parse_toml("\"num.partitions\" = 4\nauto.create.topics.enable = false\nlisteners = \"127.0.0.1:9\"\nlog.format = \"json\"\n").unwrap();
        let want = Settings {
            num_partitions: Some(4),
            auto_create_topics: Some(false),
            listen: Some("127.0.0.1:9".into()),
            log_format: Some(LogFormat::Json),
            ..Settings::default()
        };
        assert_eq!(got, want);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_the_defaults() {
        let flags = Settings {
            num_partitions: Some(6),
            ..Settings::default()
        };
        let file = parse_toml("\"num.partitions\" = 4\n\"log.level\" = \"warn\"").unwrap();
        let e = flags.or(file).effective().unwrap();
        assert_eq!(e.num_partitions, 6);
        assert_eq!(e.log, "warn");
        assert_eq!(e.node_id, 0);
        assert_eq!(e.cores, None);
    }

    #[test]
    fn printed_settings_read_back_to_the_same_settings() {
        let file = "node.id = 2\ncores = 3\n\"offsets.retention.minutes\" = 2\n\
                    \"controller.quorum.voters\" = \"2@127.0.0.1:9002, 1@127.0.0.1:9001\"\n";
        let mut first = parse_toml(file).unwrap().effective().unwrap();
        first.resolve(8).unwrap();
        let printed = first.render_toml();
        for (key, _) in FILE_KEYS {
            assert!(
                printed.contains(&format!("\"{key}\" = ")),
                "{key}: {printed}"
            );
        }
        assert!(
            printed.contains("\"offsets.retention.ms\" = 120000\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\"cluster.listen\" = \"127.0.0.1:9002\"\n"),
            "{printed}"
        );
        let mut again = parse_toml(&printed).unwrap().effective().unwrap();
        again.resolve(1).unwrap();
        assert_eq!(again, first);
        let mut single = Settings::default().effective().unwrap();
        single.resolve(1).unwrap();
        let printed = single.render_toml();
        assert!(printed.contains("\"cluster.listen\" = \"\"\n"), "{printed}");
        let mut again = parse_toml(&printed).unwrap().effective().unwrap();
        again.resolve(1).unwrap();
        assert_eq!(again, single);
    }

    #[test]
    fn values_outside_their_declared_range_are_refused_with_key_value_and_bound() {
        for (toml, want) in [
            ("cores = 0", "cores=0: must be at least 1"),
            (
                "\"num.partitions\" = 0",
                "num.partitions=0: must be between 1 and 100000",
            ),
            (
                "\"io.memory.mib\" = 0",
                "io.memory.mib=0: must be at least 1",
            ),
            (
                "\"offsets.retention.ms\" = 0",
                "offsets.retention.ms=0: must be between 1 and 9223372036854775807",
            ),
        ] {
            let e = parse_toml(toml).unwrap().effective().unwrap_err();
            assert_eq!(e, want);
        }
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
    fn unknown_keys_bad_types_and_bad_values_are_refused_by_name() {
        let e = parse_toml("\"num.partitons\" = 4").unwrap_err();
        assert!(e.starts_with("unknown setting 'num.partitons'"), "{e}");
        let e = parse_toml("cores = [1, 2]").unwrap_err();
        assert!(e.contains("cores"), "{e}");
        let e = parse_toml("\"num.partitions\" = \"many\"").unwrap_err();
        assert_eq!(
            e,
            "num.partitions = \"many\": invalid value (invalid digit found in string)"
        );
        let e = parse_toml("\"log.format\" = \"xml\"").unwrap_err();
        assert!(e.contains("text or json"), "{e}");
        let e = parse_toml("\"num.partitions\" = 1\nnum.partitions = 2").unwrap_err();
        assert_eq!(e, "num.partitions is set twice");
    }
}
