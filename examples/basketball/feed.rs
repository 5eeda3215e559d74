//! The live basketball score feed, end to end on a Kafka-protocol broker:
//!
//! 1. a **producer** plays a league night: several games at once, each a stream of
//!    events (scores, fouls, timeouts, quarter ends, the final whistle) keyed by game,
//!    so one game's events stay in order on one partition; each record's timestamp is
//!    the game time (tip-off + game clock);
//! 2. a **consumer group** of scoreboard members splits the partitions and keeps a
//!    live scoreboard for each game it owns, printing it at every quarter end;
//! 3. a **stream job** (its own group) groups events into 12-minute tumbling windows
//!    on the record timestamp — one window per quarter — and, when a game's event time
//!    passes a window's end, writes that window's totals to the totals topic, then
//!    commits its input offsets (at-least-once).
//!
//! The run is bounded: it ends when every game's final is on every side, or fails
//! after `timeout`. `run` returns what each side saw so callers (main, the CI test)
//! can check the totals add up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

/// A quarter is 12 minutes of game clock, and one tumbling window.
pub const WINDOW_MS: i64 = 12 * 60 * 1000;
pub const QUARTERS: u8 = 4;
const TEAMS: &[&str] = &[
    "Hawks", "Owls", "Comets", "Foxes", "Bears", "Herons", "Lynx", "Pumas", "Otters", "Wolves",
    "Falcons", "Rams",
];

#[derive(Clone, Debug)]
pub struct Options {
    pub bootstrap: String,
    /// Topic and group names start with this, so runs never see each other's data.
    pub prefix: String,
    pub games: usize,
    pub partitions: i32,
    pub scoreboard_members: usize,
    pub seed: u64,
    /// Pace of the producer; 0 sends as fast as the broker takes them.
    pub events_per_sec: u32,
    pub timeout: Duration,
    pub verbose: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Score,
    Foul,
    Timeout,
    QuarterEnd,
    Final,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Home,
    Away,
}

/// One record of the events topic (JSON value; key = game id).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Event {
    pub game: String,
    pub seq: u32,
    pub kind: Kind,
    pub quarter: u8,
    pub side: Option<Side>,
    pub points: u32,
    pub home: String,
    pub away: String,
}

/// One record of the totals topic: a game's totals in one window (quarter).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarterTotal {
    pub game: String,
    pub quarter: u8,
    pub window_start_ms: i64,
    pub home_points: u32,
    pub away_points: u32,
    pub home_fouls: u32,
    pub away_fouls: u32,
    pub timeouts: u32,
    pub events: u32,
}

impl QuarterTotal {
    /// Folds one event into the window's totals.
    pub fn add(&mut self, e: &Event) {
        match (e.kind, e.side) {
            (Kind::Score, Some(Side::Home)) => self.home_points += e.points,
            (Kind::Score, Some(Side::Away)) => self.away_points += e.points,
            (Kind::Foul, Some(Side::Home)) => self.home_fouls += 1,
            (Kind::Foul, Some(Side::Away)) => self.away_fouls += 1,
            (Kind::Timeout, _) => self.timeouts += 1,
            _ => return,
        }
        self.events += 1;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scoreboard {
    pub home: String,
    pub away: String,
    pub home_points: u32,
    pub away_points: u32,
    pub home_fouls: u32,
    pub away_fouls: u32,
    pub quarter: u8,
    pub done: bool,
}

pub struct Summary {
    pub events_topic: String,
    pub totals_topic: String,
    pub events_sent: usize,
    /// What the producer played: per game, per quarter.
    pub truth: BTreeMap<String, Vec<QuarterTotal>>,
    /// Final scoreboards as the consumer group kept them.
    pub scoreboards: BTreeMap<String, Scoreboard>,
    /// What the stream job wrote, per game, by quarter.
    pub totals_written: BTreeMap<String, Vec<QuarterTotal>>,
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn client_config(o: &Options) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

/// The events of one game, in order, each with its offset on the game clock.
fn play_game(rng: &mut StdRng, game: &str, home: &str, away: &str) -> Vec<(i64, Event)> {
    let mut out = Vec::new();
    let mut seq = 0;
    let mut push = |clock: i64, kind, quarter, side, points| {
        out.push((
            clock,
            Event {
                game: game.to_string(),
                seq,
                kind,
                quarter,
                side,
                points,
                home: home.to_string(),
                away: away.to_string(),
            },
        ));
        seq += 1;
    };
    for q in 1..=QUARTERS {
        let start = (q as i64 - 1) * WINDOW_MS;
        let n = rng.gen_range(30..60);
        let mut clocks: Vec<i64> = (0..n).map(|_| rng.gen_range(0..WINDOW_MS - 1)).collect();
        clocks.sort();
        for c in clocks {
            let side = if rng.gen_bool(0.5) {
                Side::Home
            } else {
                Side::Away
            };
            let roll = rng.gen_range(0..100);
            let (kind, points) = match roll {
                0..=44 => (Kind::Score, 2),
                45..=59 => (Kind::Score, 3),
                60..=69 => (Kind::Score, 1),
                70..=91 => (Kind::Foul, 0),
                _ => (Kind::Timeout, 0),
            };
            push(start + c, kind, q, Some(side), points);
        }
        push(start + WINDOW_MS - 1, Kind::QuarterEnd, q, None, 0);
    }
    push(
        QUARTERS as i64 * WINDOW_MS - 1,
        Kind::Final,
        QUARTERS,
        None,
        0,
    );
    out
}

fn create_topics(o: &Options, names: &[&str]) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(o).create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, o.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in futures::executor::block_on(admin.create_topics(&topics, &opts))? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("create topic {t}: {e}").into()),
        }
    }
    Ok(())
}

fn decode(m: &impl Message) -> Option<Event> {
    serde_json::from_slice(m.payload()?).ok()
}

/// Runs producer, scoreboard group and stream job until every game is final.
pub fn run(o: &Options) -> Result<Summary, Error> {
    let events_topic = format!("{}-events", o.prefix);
    let totals_topic = format!("{}-quarter-totals", o.prefix);
    create_topics(o, &[&events_topic, &totals_topic])?;
    let deadline = Instant::now() + o.timeout;
    let failed = Arc::new(AtomicBool::new(false));

    // The league night: games tip off together, T0 aligned to a window an hour ago.
    let mut rng = StdRng::seed_from_u64(o.seed);
    let t0 = (rdkafka::util::current_time_millis() - 3_600_000) / WINDOW_MS * WINDOW_MS;
    let mut games = Vec::new();
    let mut truth = BTreeMap::new();
    for g in 0..o.games {
        let game = format!("game-{}", g + 1);
        let home = TEAMS[(2 * g) % TEAMS.len()];
        let away = TEAMS[(2 * g + 1) % TEAMS.len()];
        let events = play_game(&mut rng, &game, home, away);
        let mut quarters = vec![QuarterTotal::default(); QUARTERS as usize];
        for (i, q) in quarters.iter_mut().enumerate() {
            q.game = game.clone();
            q.quarter = i as u8 + 1;
            q.window_start_ms = t0 + i as i64 * WINDOW_MS;
        }
        for (_, e) in &events {
            quarters[e.quarter as usize - 1].add(e);
        }
        truth.insert(game.clone(), quarters);
        games.push(events);
    }

    // 2. Scoreboard members; they must own every partition before play starts, so a
    // later rebalance cannot split a game (and if one does, a new owner replays the
    // partition from the start: the group never commits, scoreboards are in memory).
    let finals_seen: Arc<Mutex<BTreeMap<String, Scoreboard>>> = Arc::default();
    let assigned = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    let members: Vec<BaseConsumer> = (0..o.scoreboard_members)
        .map(|_| {
            let mut c = client_config(o);
            c.set("group.id", format!("{}-scoreboards", o.prefix))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "500")
                .set("fetch.wait.max.ms", "100");
            c.create::<BaseConsumer>()
        })
        .collect::<Result<_, _>>()?;
    for m in &members {
        m.subscribe(&[&events_topic])?;
    }
    // Poll all members from one thread until the group is stable with every
    // partition owned (JoinGroup needs every member to poll).
    loop {
        for m in &members {
            if let Some(Err(e)) = m.poll(Duration::from_millis(50)) {
                return Err(format!("scoreboard member: {e}").into());
            }
        }
        let owned: Vec<usize> = members
            .iter()
            .map(|m| m.assignment().map(|a| a.count()).unwrap_or(0))
            .collect();
        if owned.iter().sum::<usize>() == o.partitions as usize
            && owned
                .iter()
                .all(|n| *n > 0 || o.scoreboard_members > o.partitions as usize)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("scoreboard group never settled: {owned:?}").into());
        }
    }
    for (i, member) in members.into_iter().enumerate() {
        let finals_seen = Arc::clone(&finals_seen);
        let failed = Arc::clone(&failed);
        let assigned = Arc::clone(&assigned);
        let (games_total, verbose) = (o.games, o.verbose);
        threads.push(std::thread::spawn(move || -> Result<(), Error> {
            assigned.fetch_add(1, Ordering::Relaxed);
            let mut boards: HashMap<String, Scoreboard> = HashMap::new();
            while finals_seen.lock().unwrap().len() < games_total {
                if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return Err("scoreboard: timed out".into());
                }
                let Some(msg) = member.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let msg = msg?;
                let Some(e) = decode(&msg) else { continue };
                // A replay after a rebalance starts the game's board afresh.
                if e.seq == 0 {
                    boards.remove(&e.game);
                }
                let b = boards.entry(e.game.clone()).or_insert_with(|| Scoreboard {
                    home: e.home.clone(),
                    away: e.away.clone(),
                    ..Scoreboard::default()
                });
                b.quarter = e.quarter;
                match (e.kind, e.side) {
                    (Kind::Score, Some(Side::Home)) => b.home_points += e.points,
                    (Kind::Score, Some(Side::Away)) => b.away_points += e.points,
                    (Kind::Foul, Some(Side::Home)) => b.home_fouls += 1,
                    (Kind::Foul, Some(Side::Away)) => b.away_fouls += 1,
                    (Kind::QuarterEnd, _) if verbose => println!(
                        "[scoreboard {}] {:<7} {:>8} {:>3} - {:<3} {:<8} end of Q{}",
                        i + 1,
                        e.game,
                        b.home,
                        b.home_points,
                        b.away_points,
                        b.away,
                        e.quarter
                    ),
                    (Kind::Final, _) => {
                        b.done = true;
                        if verbose {
                            println!(
                                "[scoreboard {}] {:<7} {:>8} {:>3} - {:<3} {:<8} FINAL",
                                i + 1,
                                e.game,
                                b.home,
                                b.home_points,
                                b.away_points,
                                b.away
                            );
                        }
                        finals_seen
                            .lock()
                            .unwrap()
                            .insert(e.game.clone(), b.clone());
                    }
                    _ => {}
                }
            }
            Ok(())
        }));
    }

    // 3. The stream job: tumbling windows on the record timestamp.
    let totals_written: Arc<Mutex<BTreeMap<String, Vec<QuarterTotal>>>> = Arc::default();
    {
        let o = o.clone();
        let (events_topic, totals_topic) = (events_topic.clone(), totals_topic.clone());
        let failed = Arc::clone(&failed);
        let totals_written = Arc::clone(&totals_written);
        threads.push(std::thread::spawn(move || -> Result<(), Error> {
            let mut c = client_config(&o);
            c.set("group.id", format!("{}-quarter-totals-job", o.prefix))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "100");
            let consumer: BaseConsumer = c.create()?;
            consumer.subscribe(&[&events_topic])?;
            let mut pc = client_config(&o);
            pc.set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5");
            let producer: BaseProducer = pc.create()?;
            // Per game: the open window and how many windows it closed.
            let mut open: HashMap<String, QuarterTotal> = HashMap::new();
            let mut closed: HashMap<String, u8> = HashMap::new();
            let mut done: HashSet<String> = HashSet::new();
            let emit = |t: &QuarterTotal| -> Result<(), Error> {
                let value = serde_json::to_vec(t)?;
                producer
                    .send(
                        BaseRecord::to(&totals_topic)
                            .key(&t.game)
                            .payload(&value)
                            .timestamp(t.window_start_ms),
                    )
                    .map_err(|(e, _)| e)?;
                totals_written
                    .lock()
                    .unwrap()
                    .entry(t.game.clone())
                    .or_default()
                    .push(t.clone());
                Ok(())
            };
            while done.len() < o.games {
                if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return Err("stream job: timed out".into());
                }
                producer.poll(Duration::ZERO);
                let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let msg = msg?;
                let Some(ts) = msg.timestamp().to_millis() else {
                    continue;
                };
                let Some(e) = decode(&msg) else { continue };
                if done.contains(&e.game) {
                    continue; // a redelivery after the game was closed
                }
                let window = ts - ts.rem_euclid(WINDOW_MS);
                let acc = open.entry(e.game.clone()).or_insert_with(|| QuarterTotal {
                    game: e.game.clone(),
                    quarter: 1,
                    window_start_ms: window,
                    ..QuarterTotal::default()
                });
                if window > acc.window_start_ms {
                    // Event time passed the window's end: it is complete.
                    let n = closed.entry(e.game.clone()).or_insert(0);
                    *n += 1;
                    emit(acc)?;
                    *acc = QuarterTotal {
                        game: e.game.clone(),
                        quarter: *n + 1,
                        window_start_ms: window,
                        ..QuarterTotal::default()
                    };
                }
                acc.add(&e);
                if e.kind == Kind::Final {
                    emit(acc)?;
                    done.insert(e.game.clone());
                    open.remove(&e.game);
                    // Totals are acknowledged before the input is marked consumed.
                    producer.flush(Duration::from_secs(10))?;
                    consumer.commit_message(&msg, CommitMode::Sync)?;
                }
            }
            producer.flush(Duration::from_secs(10))?;
            Ok(())
        }));
    }

    // 1. The producer: games interleaved, each game's events in order.
    let mut pc = client_config(o);
    pc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: BaseProducer = pc.create()?;
    let mut cursors = vec![0usize; games.len()];
    let mut sent = 0usize;
    let pace = (o.events_per_sec > 0).then(|| Duration::from_secs(1) / o.events_per_sec);
    let started = Instant::now();
    loop {
        let mut progressed = false;
        for (g, events) in games.iter().enumerate() {
            let Some((clock, e)) = events.get(cursors[g]) else {
                continue;
            };
            cursors[g] += 1;
            progressed = true;
            let value = serde_json::to_vec(e)?;
            let kind = serde_json::to_string(&e.kind)?;
            let headers = OwnedHeaders::new().insert(Header {
                key: "kind",
                value: Some(kind.trim_matches('"')),
            });
            let mut record = BaseRecord::to(&events_topic)
                .key(&e.game)
                .payload(&value)
                .headers(headers)
                .timestamp(t0 + clock);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) if Instant::now() < deadline => {
                        producer.poll(Duration::from_millis(20));
                        record = r;
                    }
                    Err((err, _)) => return Err(err.into()),
                }
            }
            sent += 1;
            producer.poll(Duration::ZERO);
            if let Some(pace) = pace {
                let due = started + pace * sent as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        if !progressed {
            break;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    if o.verbose {
        println!(
            "[producer] {sent} events for {} games sent to {events_topic}",
            o.games
        );
    }

    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.store(true, Ordering::Relaxed);
                errors.push(e.to_string());
            }
            Err(_) => errors.push("a thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; ").into());
    }
    let scoreboards = std::mem::take(&mut *finals_seen.lock().unwrap());
    let totals_written = std::mem::take(&mut *totals_written.lock().unwrap());
    Ok(Summary {
        events_topic,
        totals_topic,
        events_sent: sent,
        truth,
        scoreboards,
        totals_written,
    })
}

/// Reads the whole totals topic back (every partition to its end), by game and quarter.
pub fn read_totals(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, BTreeMap<u8, QuarterTotal>>, Error> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "basketball-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("log_level", "3");
    let consumer: BaseConsumer = c.create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut at_end = HashSet::new();
    let mut out: BTreeMap<String, BTreeMap<u8, QuarterTotal>> = BTreeMap::new();
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(format!("reading {topic}: timed out").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                let t: QuarterTotal = serde_json::from_slice(m.payload().unwrap_or_default())?;
                // At-least-once: a redelivered window is the same record again.
                out.entry(t.game.clone()).or_default().insert(t.quarter, t);
            }
        }
    }
    Ok(out)
}
