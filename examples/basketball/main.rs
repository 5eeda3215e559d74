//! The live basketball score feed against a running broker:
//!
//! ```sh
//! cargo run --release -- serve &                      # or any Kafka-compatible broker
//! cargo run --release --example basketball -- --bootstrap 127.0.0.1:9092
//! ```
//!
//! Plays a league night (producer), keeps live scoreboards in a consumer group, and
//! computes per-quarter totals in 12-minute tumbling windows into a second topic;
//! then reads that topic back and checks it against the games played. See feed.rs.

mod feed;

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Live basketball score feed: producer, scoreboard group, windowed totals")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic/group name prefix (default: basketball-<unix seconds>).
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long, default_value_t = 4)]
    games: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 2)]
    scoreboards: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Producer pace (0 = as fast as possible).
    #[arg(long, default_value_t = 400)]
    events_per_sec: u32,
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn main() {
    let a = Args::parse();
    let options = feed::Options {
        bootstrap: a.bootstrap.clone(),
        prefix: a.prefix.unwrap_or_else(|| {
            format!("basketball-{}", rdkafka::util::current_time_millis() / 1000)
        }),
        games: a.games,
        partitions: a.partitions,
        scoreboard_members: a.scoreboards,
        seed: a.seed,
        events_per_sec: a.events_per_sec,
        timeout: Duration::from_secs(a.timeout_secs),
        verbose: true,
    };
    let summary = match feed::run(&options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("basketball: {e}");
            std::process::exit(1);
        }
    };
    let totals =
        match feed::read_totals(&a.bootstrap, &summary.totals_topic, Duration::from_secs(30)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("basketball: {e}");
                std::process::exit(1);
            }
        };
    println!(
        "\nper-quarter totals from {} (home-away):",
        summary.totals_topic
    );
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8} {:>9}  teams",
        "game", "Q1", "Q2", "Q3", "Q4", "final"
    );
    let mut ok = true;
    for (game, quarters) in &totals {
        let cell = |q: u8| {
            quarters
                .get(&q)
                .map(|t| format!("{}-{}", t.home_points, t.away_points))
                .unwrap_or_else(|| "?".into())
        };
        let board = &summary.scoreboards[game];
        println!(
            "{game:<8} {:>8} {:>8} {:>8} {:>8} {:>9}  {} vs {}",
            cell(1),
            cell(2),
            cell(3),
            cell(4),
            format!("{}-{}", board.home_points, board.away_points),
            board.home,
            board.away
        );
        let played: Vec<_> = summary.truth[game].clone();
        let got: Vec<_> = quarters.values().cloned().collect();
        let sum = |f: fn(&feed::QuarterTotal) -> u32| got.iter().map(f).sum::<u32>();
        if got != played
            || sum(|t| t.home_points) != board.home_points
            || sum(|t| t.away_points) != board.away_points
        {
            ok = false;
            eprintln!("basketball: {game}: totals topic, scoreboard and the game played disagree");
        }
    }
    let windows: usize = summary.totals_written.values().map(Vec::len).sum();
    if !ok || totals.len() != options.games || windows < options.games * 4 {
        std::process::exit(1);
    }
    println!(
        "\n{} events, {} games, {windows} windows: quarter totals add up to the final scores (topics {}, {})",
        summary.events_sent, options.games, summary.events_topic, summary.totals_topic
    );
}
