//! `runnel`: the broker (`serve`) and a Kafka client CLI (`topic`, `produce`, `consume`,
//! `group`, `cluster`; see `src/cli/`).

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runnel::cli::{self, exit, CliError};
use runnel::config;

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
    Serve(Box<ServeArgs>),
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
    #[command(flatten)]
    settings: config::Settings,
}

fn main() {
    let command = Cli::command().mut_subcommand("serve", config::Settings::with_defaults_in_help);
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Serve(_) | Command::Consume(_)) {
        // `runnel topic list | head` ends quietly like other Unix tools, instead of a
        // panic from println!. `consume` handles EPIPE itself so it can commit first.
        // SAFETY: restoring the default disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
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
    let invalid = |e: String| CliError::usage(format!("invalid configuration: {e}"));
    let file = config::read_settings_file(args.config.as_deref()).map_err(invalid)?;
    let mut settings = args.settings.or(file).effective().map_err(invalid)?;
    let config = settings.resolve(machine_cores()).map_err(invalid)?;
    if args.print_config {
        print!("{}", settings.render_toml());
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
    config.check_memlock().map_err(CliError::error)?;
    // Before anything in the directory is opened: a second broker on it would
    // silently replace this one's acknowledged records.
    let _lock = match runnel::data_dir::DataDirLock::acquire(&config.data_dir) {
        Ok(l) => l,
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    if let Err(e) = runnel::broker::run(config) {
        // An operator mistake (a changed voter list, a node id already live): exit 2 like
        // a bad setting, since starting again unchanged cannot help.
        if let Some(refused) = e.downcast_ref::<runnel::replication::StartRefused>() {
            tracing::error!("refusing to start: {refused}");
            return Err(CliError::usage(refused.to_string()));
        }
        tracing::error!("cannot serve: {e:#}");
        eprintln!("runnel: {e:#}");
        std::process::exit(exit::ERROR);
    }
    Ok(())
}

/// The cores this process may run on: the default shard count.
fn machine_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel::config::BrokerConfig;
    use std::time::Duration;

    fn serve_args(args: &[&str]) -> Result<ServeArgs, String> {
        let argv = ["runnel", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Serve(a) => Ok(*a),
            _ => unreachable!("serve"),
        }
    }

    fn serve_config(args: &[&str]) -> Result<BrokerConfig, String> {
        serve_args(args)?.settings.effective()?.resolve(1)
    }

    #[test]
    fn serve_without_flags_leaves_every_setting_to_the_file_or_the_default() {
        assert_eq!(
            serve_args(&[]).unwrap().settings,
            config::Settings::default()
        );
        let parsed = serve_config(&[]).unwrap();
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", BrokerConfig::default())
        );
    }

    #[test]
    fn serve_help_shows_the_defaults_and_variables() {
        let mut command =
            Cli::command().mut_subcommand("serve", config::Settings::with_defaults_in_help);
        let help = command
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        for want in [
            "--listen <LISTEN>",
            "[default: 127.0.0.1:9092]",
            "[env: RUNNEL_LISTEN=]",
            "[default: ./data]",
            "[env: RUNNEL_QUEUED_MAX_REQUEST_BYTES=]",
        ] {
            assert!(help.contains(want), "{want} missing:\n{help}");
        }
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
