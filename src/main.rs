//! `runnel`: the broker (`serve`) and a Kafka client CLI (`topic`, `produce`, `consume`,
//! `group`, `cluster`; see `src/cli/`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runnel::cli::{self, exit, CliError};
use runnel::config::{self, BrokerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "runnel",
    version,
    about = "A thread-per-core broker that speaks the Kafka protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, describe, delete topics and change their configs.
    #[command(subcommand)]
    Topic(cli::topic::TopicCommand),
    /// Send lines from stdin as records.
    Produce(cli::produce::ProduceArgs),
    /// Print records of a topic (from beginning, end, an offset or a time; or in a group).
    Consume(cli::consume::ConsumeArgs),
    /// List consumer groups; show members, assignments and lag.
    #[command(subcommand)]
    Group(cli::group::GroupCommand),
    /// Cluster id, controller and brokers.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// List the record batches of a partition directory, offline (kafka-dump-log).
    DumpLog(cli::dump_log::DumpLogArgs),
}

#[derive(Parser)]
struct ServeArgs {
    /// Settings file (TOML, Kafka's key names; see runnel.toml.example). Flags and
    /// RUNNEL_* variables override it. Default: ./runnel.toml when it exists.
    #[arg(long, env = "RUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (file + environment + flags) and exit.
    #[arg(long)]
    print_config: bool,
    /// Kafka listener address (host:port).
    #[arg(long, env = "RUNNEL_LISTEN", default_value = "127.0.0.1:9092")]
    listen: String,
    /// Admin HTTP address for /metrics and /health ("off" disables it).
    #[arg(long, env = "RUNNEL_ADMIN_LISTEN", default_value = "127.0.0.1:9644")]
    admin_listen: String,
    /// Host advertised to clients in Metadata (default: the listen host).
    #[arg(long, env = "RUNNEL_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Directory for segments and the metadata log.
    #[arg(long, env = "RUNNEL_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Shards (pinned cores); default: all cores.
    #[arg(long, env = "RUNNEL_CORES")]
    cores: Option<usize>,
    #[arg(long, env = "RUNNEL_NODE_ID", default_value_t = 0)]
    node_id: i32,
    /// io_uring-registered memory per shard in MiB (counts against `ulimit -l`).
    #[arg(long, env = "RUNNEL_IO_MEMORY_MIB", default_value_t = (config::IO_MEMORY_BYTES_DEFAULT >> 20) as u64)]
    io_memory_mib: u64,
    /// auto.create.topics.enable
    #[arg(long, env = "RUNNEL_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// num.partitions: partitions of auto-created topics.
    #[arg(long, env = "RUNNEL_NUM_PARTITIONS", default_value_t = 1)]
    num_partitions: u32,
    /// socket.request.max.bytes
    #[arg(long, env = "RUNNEL_SOCKET_REQUEST_MAX_BYTES", default_value_t = config::SOCKET_REQUEST_MAX_BYTES_DEFAULT)]
    socket_request_max_bytes: usize,
    /// message.max.bytes
    #[arg(long, env = "RUNNEL_MESSAGE_MAX_BYTES", default_value_t = config::MESSAGE_MAX_BYTES_DEFAULT)]
    message_max_bytes: u32,
    /// queued.max.request.bytes: bytes of requests being handled plus their responses
    /// not yet written, all connections together; past it connections stop reading
    /// new requests and Fetch responses shrink. -1: no bound. Default: min(1 GiB,
    /// memory / 8).
    #[arg(
        long,
        env = "RUNNEL_QUEUED_MAX_REQUEST_BYTES",
        allow_hyphen_values = true
    )]
    queued_max_request_bytes: Option<i64>,
    /// max.connections
    #[arg(long, env = "RUNNEL_MAX_CONNECTIONS", default_value_t = config::CONNECTIONS_MAX_DEFAULT)]
    max_connections: usize,
    /// Log (and count in runnel_shard_stalls_total) a shard that could not serve its
    /// I/O and timers for longer than this (ms): a task held it, or the OS did.
    #[arg(long, env = "RUNNEL_STALL_THRESHOLD_MS", default_value_t = 20)]
    stall_threshold_ms: u64,
    /// Also log the stalling task's backtrace. The first one loads the binary's debug
    /// info: the shard stalls for it, and the process keeps ~200 MiB more memory.
    #[arg(long, env = "RUNNEL_STALL_BACKTRACES", default_value_t = false, action = clap::ArgAction::Set)]
    stall_backtraces: bool,
    /// Log levels, RUST_LOG syntax: a default and per-module levels,
    /// e.g. "info,runnel::group=debug".
    #[arg(long, env = "RUNNEL_LOG", default_value = "info")]
    log: String,
    /// Log line format: text or json (one JSON object per line).
    #[arg(long, env = "RUNNEL_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// log.retention.check.interval.ms: how often retention and compaction run.
    #[arg(long, env = "RUNNEL_LOG_RETENTION_CHECK_INTERVAL_MS", default_value_t = config::RETENTION_CHECK_INTERVAL_MS_DEFAULT)]
    log_retention_check_interval_ms: u64,
    /// group.initial.rebalance.delay.ms: how long a new group waits for more members
    /// before its first rebalance.
    #[arg(long, env = "RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS", default_value_t = config::GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT)]
    group_initial_rebalance_delay_ms: u64,
    /// group.min.session.timeout.ms: shortest session timeout a consumer may ask for.
    #[arg(long, env = "RUNNEL_GROUP_MIN_SESSION_TIMEOUT_MS", default_value_t = config::GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT)]
    group_min_session_timeout_ms: i32,
    /// group.max.session.timeout.ms: longest session timeout a consumer may ask for.
    #[arg(long, env = "RUNNEL_GROUP_MAX_SESSION_TIMEOUT_MS", default_value_t = config::GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT)]
    group_max_session_timeout_ms: i32,
    /// Port advertised to clients in Metadata (default: the listen port).
    #[arg(long, env = "RUNNEL_ADVERTISED_PORT")]
    advertised_port: Option<u16>,
    /// controller.quorum.voters: `id@host:port,...` (the voters' cluster listeners).
    /// Empty: a single node. Every broker of a cluster is a voter.
    #[arg(long, env = "RUNNEL_CONTROLLER_QUORUM_VOTERS", default_value = "")]
    controller_quorum_voters: String,
    /// Inter-broker (Raft) listener; default: this node's address in the voters.
    #[arg(long, env = "RUNNEL_CLUSTER_LISTEN")]
    cluster_listen: Option<String>,
    /// default.replication.factor
    #[arg(long, env = "RUNNEL_DEFAULT_REPLICATION_FACTOR", default_value_t = 1)]
    default_replication_factor: i16,
    /// replica.lag.time.max.ms
    #[arg(long, env = "RUNNEL_REPLICA_LAG_TIME_MAX_MS", default_value_t = 30_000)]
    replica_lag_time_max_ms: u64,
    /// offsets.topic.replication.factor (capped at the live brokers when created)
    #[arg(
        long,
        env = "RUNNEL_OFFSETS_TOPIC_REPLICATION_FACTOR",
        default_value_t = 3
    )]
    offsets_topic_replication_factor: i16,
    /// log.cleaner.dedupe.buffer.size: bytes of compaction key maps, all shards
    /// together (each gets an equal share); more keys than fit take several passes.
    #[arg(long, env = "RUNNEL_LOG_CLEANER_DEDUPE_BUFFER_SIZE", default_value_t = config::LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT)]
    log_cleaner_dedupe_buffer_size: u64,
    /// offsets.retention.minutes: a group without members keeps its committed offsets
    /// this long after its last member left (KIP-211).
    #[arg(long, env = "RUNNEL_OFFSETS_RETENTION_MINUTES", default_value_t = config::OFFSETS_RETENTION_MINUTES_DEFAULT)]
    offsets_retention_minutes: u32,
    /// offsets.retention.ms: the same in milliseconds; overrides the minutes when given.
    #[arg(long, env = "RUNNEL_OFFSETS_RETENTION_MS")]
    offsets_retention_ms: Option<u64>,
    /// offsets.retention.check.interval.ms: how often expired offsets are removed.
    #[arg(long, env = "RUNNEL_OFFSETS_RETENTION_CHECK_INTERVAL_MS", default_value_t = config::OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT)]
    offsets_retention_check_interval_ms: u64,
    /// offsets.topic.num.partitions: partitions of __consumer_offsets when created.
    #[arg(long, env = "RUNNEL_OFFSETS_TOPIC_NUM_PARTITIONS", default_value_t = config::OFFSETS_TOPIC_NUM_PARTITIONS_DEFAULT)]
    offsets_topic_num_partitions: u32,
    /// producer.id.expiration.ms: how long a partition keeps an idle idempotent
    /// producer's state.
    #[arg(long, env = "RUNNEL_PRODUCER_ID_EXPIRATION_MS", default_value_t = config::PRODUCER_ID_EXPIRATION_MS_DEFAULT)]
    producer_id_expiration_ms: u64,
    /// controlled.shutdown.enable: on SIGTERM a cluster broker first moves its
    /// partition leaderships to other in-sync replicas.
    #[arg(long, env = "RUNNEL_CONTROLLED_SHUTDOWN_ENABLE", default_value_t = true, action = clap::ArgAction::Set)]
    controlled_shutdown_enable: bool,
    /// controlled.shutdown.timeout.ms: how long that handover may take.
    #[arg(long, env = "RUNNEL_CONTROLLED_SHUTDOWN_TIMEOUT_MS", default_value_t = config::CONTROLLED_SHUTDOWN_TIMEOUT_MS_DEFAULT)]
    controlled_shutdown_timeout_ms: u64,
}

fn main() {
    let cli = match parse_with_config_file() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runnel: invalid configuration: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    if !matches!(cli.command, Command::Serve(_) | Command::Consume(_)) {
        // `runnel topic list | head` ends quietly like other Unix tools, instead of a
        // panic from println!. `consume` handles EPIPE itself so it can commit first.
        // SAFETY: restoring the default disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic(c) => cli::topic::run(c),
        Command::Produce(a) => cli::produce::run(a),
        Command::Consume(a) => cli::consume::run(a),
        Command::Group(c) => cli::group::run(c),
        Command::Cluster(c) => cli::cluster::run(c),
        Command::DumpLog(a) => cli::dump_log::run(a),
    };
    if let Err(e) = result {
        eprintln!("runnel: {}", e.message);
        std::process::exit(e.code);
    }
}

fn serve(args: ServeArgs) -> cli::CliResult {
    let print = args.print_config;
    let config =
        build_config(args).map_err(|e| CliError::usage(format!("invalid configuration: {e}")))?;
    if print {
        print!("{}", config::render_toml(&config));
        return Ok(());
    }
    runnel::logging::init(&config.log_filter, config.log_format);
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        return Err(CliError::error(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )));
    }
    // Relative data dirs (the default is ./data) are resolved once here: glommio
    // cannot open a relative directory path (EBADF), and a later chdir must not move
    // the data.
    let mut config = config;
    match std::path::absolute(&config.data_dir) {
        Ok(abs) => config.data_dir = abs,
        Err(e) => {
            return Err(CliError::error(format!(
                "cannot resolve data directory {}: {e}",
                config.data_dir.display()
            )))
        }
    }
    check_memlock(&config).map_err(CliError::error)?;
    // Before anything in the directory is opened: a second broker on it would
    // silently replace this one's acknowledged records.
    let _lock = match runnel::data_dir::DataDirLock::acquire(&config.data_dir) {
        Ok(l) => l,
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    if let Err(e) = runnel::broker::run(config) {
        tracing::error!("cannot serve: {e:#}");
        eprintln!("runnel: {e:#}");
        std::process::exit(exit::ERROR);
    }
    Ok(())
}

/// Parses flags and RUNNEL_* variables, then fills every setting neither of them gave
/// from the settings file, by re-parsing with the file's values as flags (so the file
/// is validated exactly like flags are).
fn parse_with_config_file() -> Result<Cli, String> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(argv.clone());
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let Some(("serve", sub)) = matches.subcommand() else {
        return Ok(cli);
    };
    let Command::Serve(args) = &cli.command else {
        return Ok(cli);
    };
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("runnel.toml"), false),
    };
    if !explicit && !path.exists() {
        return Ok(cli);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let settings = config::parse_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut extra: Vec<(String, String)> = Vec::new();
    for (flag, value) in settings {
        let id = flag.replace('-', "_");
        let given = matches!(
            sub.value_source(&id),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        );
        if !given {
            extra.push((flag, value));
        }
    }
    let with = |pairs: &[(String, String)]| {
        let mut full = argv.clone();
        for (flag, value) in pairs {
            full.push(format!("--{flag}").into());
            full.push(value.into());
        }
        Cli::try_parse_from(full)
    };
    with(&extra).map_err(|e| {
        // Name the file's key and value, not the flag it became.
        for pair in &extra {
            if let Err(one) = with(std::slice::from_ref(pair)) {
                let key = config::FILE_KEYS
                    .iter()
                    .find(|(_, f)| *f == pair.0)
                    .map_or(pair.0.as_str(), |(k, _)| *k);
                let why = one.kind().as_str().unwrap_or("invalid value");
                let detail: Vec<String> = one
                    .to_string()
                    .lines()
                    .map(|l| l.trim().trim_start_matches("error: ").to_string())
                    .filter(|l| {
                        !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more")
                    })
                    .collect();
                return format!(
                    "{}: {key} = {:?}: {why} ({})",
                    path.display(),
                    pair.1,
                    detail.join("; ")
                );
            }
        }
        format!("{}: {e}", path.display())
    })
}

fn build_config(a: ServeArgs) -> Result<BrokerConfig, String> {
    let listen: SocketAddr = a
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("listen={}: {e}", a.listen))?
        .next()
        .ok_or_else(|| format!("listen={}: resolves to no address", a.listen))?;
    let admin_listen = match a.admin_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.to_socket_addrs()
                .map_err(|e| format!("admin-listen={s}: {e}"))?
                .next()
                .ok_or_else(|| format!("admin-listen={s}: resolves to no address"))?,
        ),
    };
    let cpus = core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1);
    let voters = config::parse_voters(&a.controller_quorum_voters)?;
    let cluster_listen = a.cluster_listen.filter(|s| !s.is_empty());
    let cluster = if voters.is_empty() {
        if cluster_listen.is_some() {
            return Err("cluster-listen needs controller.quorum.voters".into());
        }
        None
    } else {
        let listen = match &cluster_listen {
            Some(s) => s
                .to_socket_addrs()
                .map_err(|e| format!("cluster-listen={s}: {e}"))?
                .next()
                .ok_or_else(|| format!("cluster-listen={s}: resolves to no address"))?,
            None => voters
                .iter()
                .find(|v| v.id == a.node_id)
                .map(|v| v.addr)
                .ok_or_else(|| {
                    format!(
                        "node.id={} is not in controller.quorum.voters (every broker of a cluster is a voter)",
                        a.node_id
                    )
                })?,
        };
        Some(config::ClusterConfig { voters, listen })
    };
    let config = BrokerConfig {
        listen,
        admin_listen,
        advertised_host: a.advertised_host.unwrap_or_else(|| {
            if listen.ip().is_unspecified() {
                "127.0.0.1".into()
            } else {
                listen.ip().to_string()
            }
        }),
        advertised_port: a.advertised_port.unwrap_or(listen.port()),
        data_dir: a.data_dir,
        cores: a.cores.unwrap_or(cpus),
        node_id: a.node_id,
        io_memory_bytes: (a.io_memory_mib as usize) << 20,
        auto_create_topics: a.auto_create_topics,
        num_partitions: a.num_partitions,
        socket_request_max_bytes: a.socket_request_max_bytes,
        message_max_bytes: a.message_max_bytes,
        queued_max_request_bytes: a
            .queued_max_request_bytes
            .unwrap_or_else(config::queued_max_request_bytes_default),
        connections_max: a.max_connections,
        stall_threshold_ms: a.stall_threshold_ms,
        stall_backtraces: a.stall_backtraces,
        log_filter: a.log,
        log_format: a.log_format.parse()?,
        log_retention_check_interval_ms: a.log_retention_check_interval_ms,
        group_initial_rebalance_delay_ms: a.group_initial_rebalance_delay_ms,
        group_min_session_timeout_ms: a.group_min_session_timeout_ms,
        group_max_session_timeout_ms: a.group_max_session_timeout_ms,
        cluster,
        default_replication_factor: a.default_replication_factor,
        replica_lag_time_max_ms: a.replica_lag_time_max_ms,
        offsets_topic_replication_factor: a.offsets_topic_replication_factor,
        log_cleaner_dedupe_buffer_size: a.log_cleaner_dedupe_buffer_size,
        offsets_retention_minutes: a.offsets_retention_minutes,
        offsets_retention_ms: a.offsets_retention_ms,
        offsets_retention_check_interval_ms: a.offsets_retention_check_interval_ms,
        offsets_topic_num_partitions: a.offsets_topic_num_partitions,
        producer_id_expiration_ms: a.producer_id_expiration_ms,
        controlled_shutdown_enable: a.controlled_shutdown_enable,
        controlled_shutdown_timeout_ms: a.controlled_shutdown_timeout_ms,
    };
    config.validate()?;
    Ok(config)
}

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK, whoever runs it.
const GLOMMIO_MEMLOCK_FLOOR_BYTES: u64 = 512 << 10;
/// glommio registers at least this much io memory per executor.
const GLOMMIO_IO_MEMORY_MIN_BYTES: u64 = 64 << 10;

/// Locked memory one shard's io_uring buffers take.
fn memlock_per_shard_bytes(config: &BrokerConfig) -> u64 {
    (config.io_memory_bytes as u64)
        .next_multiple_of(4096)
        .max(GLOMMIO_IO_MEMORY_MIN_BYTES)
}

/// Locked memory every shard's io_uring buffers need together.
fn memlock_needed_bytes(config: &BrokerConfig) -> u64 {
    (memlock_per_shard_bytes(config) * config.cores as u64).max(GLOMMIO_MEMLOCK_FLOOR_BYTES)
}

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

/// Refuses to start when RLIMIT_MEMLOCK cannot hold every shard's io_uring memory,
/// naming the exact limit to set: past it shards fail to start (or, with registration
/// refused, run on slower unregistered buffers) and the operator sees no reason.
fn check_memlock(config: &BrokerConfig) -> Result<(), String> {
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
    let need = memlock_needed_bytes(config);
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
    let per_shard = memlock_per_shard_bytes(config);
    let shards_that_fit = have / per_shard;
    let need_kib = need.div_ceil(1024);
    Err(format!(
        "{} shards × {} KiB of io_uring memory need {need_kib} KiB of locked memory, but \
         the limit (ulimit -l) is {} KiB. Raise it: `ulimit -l {need_kib}` in the shell that \
         starts the broker, `LimitMEMLOCK={need}` in its systemd unit, or a memlock line in \
         /etc/security/limits.conf; or lower --cores (at most {shards_that_fit} fit now) or \
         --io-memory-mib.",
        config.cores,
        per_shard >> 10,
        have >> 10,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn serve_config(args: &[&str]) -> Result<BrokerConfig, String> {
        let argv = ["runnel", "serve", "--cores", "1"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(a) => build_config(a),
            _ => unreachable!("serve"),
        }
    }

    #[test]
    fn serve_without_flags_is_the_library_default() {
        let parsed = serve_config(&[]).unwrap();
        assert_eq!(
            config::render_toml(&parsed),
            config::render_toml(&BrokerConfig::default())
        );
    }

    #[test]
    fn offsets_retention_is_minutes_unless_ms_are_given_and_bad_values_are_named() {
        let c = serve_config(&[]).unwrap();
        assert_eq!(c.offsets_retention(), Duration::from_secs(7 * 24 * 3600));
        let c = serve_config(&["--offsets-retention-minutes", "2"]).unwrap();
        assert_eq!(c.offsets_retention(), Duration::from_secs(120));
        let c = serve_config(&[
            "--offsets-retention-minutes",
            "2",
            "--offsets-retention-ms",
            "1500",
        ])
        .unwrap();
        assert_eq!(c.offsets_retention(), Duration::from_millis(1500));
        for (flag, value, key) in [
            (
                "--offsets-retention-minutes",
                "0",
                "offsets.retention.minutes=0",
            ),
            ("--offsets-retention-ms", "0", "offsets.retention.ms=0"),
            (
                "--offsets-retention-check-interval-ms",
                "5",
                "offsets.retention.check.interval.ms=5",
            ),
        ] {
            let e = serve_config(&[flag, value]).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn a_bad_dedupe_buffer_size_is_refused_with_its_name() {
        let c = serve_config(&["--log-cleaner-dedupe-buffer-size", "65536"]).unwrap();
        assert_eq!(c.dedupe_buffer_bytes_per_shard(), 65536);
        let e = serve_config(&["--log-cleaner-dedupe-buffer-size", "100"]).unwrap_err();
        assert!(e.contains("log.cleaner.dedupe.buffer.size=100"), "{e}");
        let e = serve_config(&["--log-cleaner-dedupe-buffer-size", "lots"]).unwrap_err();
        assert!(e.contains("log-cleaner-dedupe-buffer-size"), "{e}");
    }
}
