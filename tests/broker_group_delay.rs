//! group.initial.rebalance.delay.ms: a new group's first rebalance waits for more
//! members, so consumers started together share the first generation.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

const DELAY_MS: u64 = 1500;

fn member(bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300");
    let c: BaseConsumer = c.create().unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

#[test]
fn members_joining_within_the_initial_delay_share_the_first_generation() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--group-initial-rebalance-delay-ms".into(),
            DELAY_MS.to_string(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("delay");
    create_topic_blocking(&bootstrap, &topic, 4);
    let group = topic_name("delay-group");

    let started = Instant::now();
    let a = member(&bootstrap, &group, &topic);
    // Joins well inside the delay.
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        a.poll(Duration::from_millis(20));
    }
    let b = member(&bootstrap, &group, &topic);
    let mut first_a: Option<BTreeSet<i32>> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.poll(Duration::from_millis(20));
        b.poll(Duration::from_millis(20));
        let (sa, sb) = (assigned(&a), assigned(&b));
        if first_a.is_none() && !sa.is_empty() {
            first_a = Some(sa.clone());
        }
        if !sa.is_empty() && !sb.is_empty() && sa.len() + sb.len() == 4 && sa.is_disjoint(&sb) {
            break;
        }
        assert!(Instant::now() < deadline, "no split: {sa:?} {sb:?}");
    }
    let first_assigned = started.elapsed();
    assert!(
        first_assigned >= Duration::from_millis(DELAY_MS),
        "the first rebalance ended after {first_assigned:?}, before the {DELAY_MS} ms delay"
    );
    // a never owned every partition: both were in the first generation.
    assert_eq!(first_a.unwrap().len(), 2);
}
