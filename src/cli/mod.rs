//! Client subcommands of the `runnel` binary: `topic`, `produce`, `consume`, `group`,
//! `cluster`. They speak the Kafka protocol through librdkafka (the `rdkafka` crate),
//! so they work against any Kafka-compatible broker, not only Runnel.
//!
//! Every command bounds its waits by `--timeout-ms`, checks first that a bootstrap
//! server accepts TCP connections (so an unreachable broker fails in well under the
//! timeout instead of librdkafka retrying quietly), prints human tables on stdout by
//! default and one JSON document with `--json`, and exits with one of the codes in
//! [`exit`]. Progress and summaries go to stderr so stdout stays parseable.

pub mod cluster;
pub mod consume;
pub mod dump_log;
pub mod group;
pub mod produce;
pub mod topic;
pub mod wire;

use std::io::{IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Process exit codes, stable for scripts.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any failure not covered below: broker unreachable, request refused, timeout.
    pub const ERROR: i32 = 1;
    /// Bad command line (clap uses 2 for its own parse errors too).
    pub const USAGE: i32 = 2;
    /// The named topic or group does not exist.
    pub const NOT_FOUND: i32 = 3;
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn error(message: impl Into<String>) -> CliError {
        CliError {
            code: exit::ERROR,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: exit::USAGE,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError {
            code: exit::NOT_FOUND,
            message: message.into(),
        }
    }
    /// Maps a librdkafka error: unknown topic/group become NOT_FOUND.
    pub fn kafka(context: &str, e: KafkaError) -> CliError {
        let code = e.rdkafka_error_code();
        match code {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownTopic)
            | Some(RDKafkaErrorCode::UnknownPartition)
            | Some(RDKafkaErrorCode::GroupIdNotFound) => {
                CliError::not_found(format!("{context}: {e}"))
            }
            _ => CliError::error(format!("{context}: {e}")),
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Connection settings every client subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Broker(s) to bootstrap from, comma-separated host:port.
    #[arg(
        short = 'b',
        long = "bootstrap-server",
        env = "RUNNEL_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_server: String,
    /// Upper bound for each request to the broker, and for reaching it at all (ms).
    #[arg(long, env = "RUNNEL_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// librdkafka client property (repeatable), e.g. -X security.protocol=ssl.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub client_property: Vec<String>,
}

impl ClientArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// librdkafka settings shared by every client the CLI creates.
    pub fn client_config(&self) -> CliResult<ClientConfig> {
        let mut c = ClientConfig::new();
        let t = self.timeout_ms.to_string();
        c.set("bootstrap.servers", &self.bootstrap_server)
            .set("client.id", "runnel-cli")
            .set("socket.timeout.ms", &t)
            .set("socket.connection.setup.timeout.ms", &t)
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            // Looking a topic up must not create it (produce turns this back on).
            .set("allow.auto.create.topics", "false")
            // librdkafka logs through the `log` crate; keep only errors.
            .set("log_level", "3");
        for kv in &self.client_property {
            let (k, v) = split_kv(kv, "-X")?;
            c.set(k, v);
        }
        Ok(c)
    }

    /// Fails fast when no bootstrap server accepts a TCP connection: librdkafka would
    /// otherwise retry until the request timeout and report only a timeout.
    pub fn check_reachable(&self) -> CliResult {
        let deadline = Instant::now() + self.timeout();
        let mut errors = Vec::new();
        for server in self.bootstrap_server.split(',').map(str::trim) {
            let server = server
                .strip_prefix("PLAINTEXT://")
                .or_else(|| server.strip_prefix("SSL://"))
                .unwrap_or(server);
            let addrs = match server.to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    errors.push(format!("{server}: {e}"));
                    continue;
                }
            };
            for addr in addrs {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(_) => return Ok(()),
                    Err(e) => errors.push(format!("{addr}: {e}")),
                }
            }
        }
        Err(CliError::error(format!(
            "cannot reach a broker at {} ({}); is it running? (set --bootstrap-server or RUNNEL_BOOTSTRAP)",
            self.bootstrap_server,
            errors.join("; ")
        )))
    }
}

/// Splits `key=value`; `what` names the flag in the error.
pub fn split_kv<'a>(kv: &'a str, what: &str) -> CliResult<(&'a str, &'a str)> {
    kv.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::usage(format!("{what} {kv:?}: expected KEY=VALUE")))
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a serde_json::Value always serializes")
    );
}

/// Progress and rates for long produce/consume runs, on stderr: a line every
/// [`Progress::EVERY`] once a run lasts that long, and a summary at the end.
pub struct Progress {
    verb: &'static str,
    target: String,
    quiet: bool,
    tty: bool,
    start: Instant,
    last: Instant,
    pub records: u64,
    pub bytes: u64,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(2);

    pub fn new(verb: &'static str, target: String, quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            verb,
            target,
            quiet,
            tty: std::io::stderr().is_terminal(),
            start: now,
            last: now,
            records: 0,
            bytes: 0,
        }
    }

    pub fn add(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
        if !self.quiet && self.last.elapsed() >= Self::EVERY {
            self.last = Instant::now();
            let line = self.line();
            if self.tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        format!(
            "runnel: {} {} records {} ({:.1} MiB) in {:.1} s: {:.0} records/s, {:.2} MiB/s",
            self.verb,
            self.records,
            self.target,
            self.bytes as f64 / (1 << 20) as f64,
            secs,
            self.records as f64 / secs,
            self.bytes as f64 / (1 << 20) as f64 / secs
        )
    }

    pub fn finish(&self) {
        if self.quiet {
            return;
        }
        if self.tty && self.start.elapsed() >= Self::EVERY {
            eprintln!();
        }
        eprintln!("{}", self.line());
    }
}
