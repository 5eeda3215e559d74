//! The basketball example (examples/basketball) against a harness broker: its code
//! runs as is (included by path), and then the test checks the totals topic on its
//! own: it reads every event back, sums each game's 12-minute windows from the
//! record timestamps, and compares with every record of the per-quarter totals topic.

mod common;
#[path = "../examples/basketball/feed.rs"]
#[allow(dead_code)]
mod feed;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rdkafka::message::Message;

#[test]
fn basketball_feed_writes_correct_per_quarter_totals() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let b = broker.bootstrap();
    let options = feed::Options {
        bootstrap: b.clone(),
        prefix: topic_name("basketball"),
        games: 5,
        partitions: 4,
        scoreboard_members: 2,
        seed: 42,
        events_per_sec: 0,
        timeout: Duration::from_secs(60),
        verbose: false,
    };
    let summary = feed::run(&options).expect("the example runs to the end");

    // Expected, from the events topic alone.
    let consumer = consumer(&b, &[]);
    assign(
        &consumer,
        &summary.events_topic,
        &[0, 1, 2, 3],
        rdkafka::Offset::Beginning,
    );
    let events = consume_to_end(&consumer, &[0, 1, 2, 3], CONSUME_TIMEOUT);
    assert_eq!(events.len(), summary.events_sent);
    let mut expected: BTreeMap<(String, i64), feed::QuarterTotal> = BTreeMap::new();
    for m in &events {
        let e: feed::Event = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(m.key(), Some(e.game.as_bytes()), "keyed by game");
        let ts = m.timestamp().to_millis().unwrap();
        let window = ts - ts.rem_euclid(feed::WINDOW_MS);
        let t = expected.entry((e.game.clone(), window)).or_default();
        t.game = e.game.clone();
        t.window_start_ms = window;
        t.add(&e);
    }
    assert_eq!(expected.len(), options.games * feed::QUARTERS as usize);

    let totals = feed::read_totals(&b, &summary.totals_topic, CONSUME_TIMEOUT).unwrap();
    assert_eq!(totals.len(), options.games);
    for (game, quarters) in &totals {
        assert_eq!(
            quarters.len(),
            feed::QUARTERS as usize,
            "{game}: {quarters:?}"
        );
        let mut windows: Vec<i64> = Vec::new();
        for (q, t) in quarters {
            let mut want = expected[&(game.clone(), t.window_start_ms)].clone();
            want.quarter = *q;
            assert_eq!(t, &want, "{game} Q{q}");
            windows.push(t.window_start_ms);
        }
        // Tumbling: consecutive, non-overlapping 12-minute windows.
        for w in windows.windows(2) {
            assert_eq!(w[1] - w[0], feed::WINDOW_MS, "{game}: {windows:?}");
        }
        // The consumer group's live scoreboard ends where the windows add up to.
        let board = &summary.scoreboards[game];
        assert!(board.done);
        assert_eq!(
            (board.home_points, board.away_points),
            (
                quarters.values().map(|t| t.home_points).sum(),
                quarters.values().map(|t| t.away_points).sum()
            ),
            "{game}"
        );
        // And both match the games the producer played.
        assert_eq!(
            quarters.values().cloned().collect::<Vec<_>>(),
            summary.truth[game],
            "{game}"
        );
    }
}
