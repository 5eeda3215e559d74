//! Consumer groups with librdkafka (`group.id` + `subscribe()`) against `runnel serve`:
//! partitions split between members with no overlap and no gap, a member's leave hands
//! everything to the rest, cooperative-sticky rebalances, and committed offsets that
//! survive a SIGKILL of the broker. Raw-wire checks cover the KIP-394 member id and the
//! group error codes.
//!
//! Every wait polls a condition with a deadline; nothing sleeps to synchronize.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    JoinGroupRequest, ListGroupsRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Upper bound for a group to settle after a membership change (join phase + sync).
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(45);

/// A subscribing group member with short heartbeats so rebalances are noticed fast.
fn member(bootstrap: &str, group: &str, topic: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    member_with(bootstrap, group, topic, extra, DefaultConsumerContext)
}

fn member_with<C: ConsumerContext>(
    bootstrap: &str,
    group: &str,
    topic: &str,
    extra: &[(&str, &str)],
    context: C,
) -> BaseConsumer<C> {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("max.poll.interval.ms", "60000")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer<C> = c
        .create_with_context(context)
        .expect("create group consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Closes a group member (LeaveGroup), failing the test if librdkafka's close does
/// not finish in time: its drop loops until the group says goodbye.
fn close<C: ConsumerContext + 'static>(c: BaseConsumer<C>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(c);
        let _ = tx.send(());
    });
    rx.recv_timeout(REBALANCE_TIMEOUT)
        .expect("consumer close did not finish");
}

fn assigned<C: ConsumerContext>(c: &BaseConsumer<C>) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer (driving its group protocol) until `done` holds for their
/// assignments. Panics with the last assignments on timeout.
fn poll_until<C: ConsumerContext>(
    consumers: &[&BaseConsumer<C>],
    what: &str,
    done: impl Fn(&[BTreeSet<i32>]) -> bool,
) {
    let deadline = Instant::now() + REBALANCE_TIMEOUT;
    loop {
        for c in consumers {
            match c.poll(Duration::from_millis(20)) {
                None | Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => eprintln!("consumer event while waiting for {what}: {e:?}"),
            }
        }
        let now: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {REBALANCE_TIMEOUT:?}; assignments {now:?}"
        );
    }
}

/// Two non-empty, disjoint assignments that together cover partitions 0..n.
fn split_exactly(a: &[BTreeSet<i32>], n: i32) -> bool {
    let all: BTreeSet<i32> = (0..n).collect();
    a.iter().all(|s| !s.is_empty())
        && a[0].is_disjoint(&a[1])
        && a[0].union(&a[1]).copied().collect::<BTreeSet<i32>>() == all
}

fn split_then_leave(strategy: &str) {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("groups-split");
    let group = topic_name("g-split");
    create_topic_blocking(&bootstrap, &topic, 8);
    let extra = [("partition.assignment.strategy", strategy)];
    let a = member(&bootstrap, &group, &topic, &extra);
    poll_until(&[&a], "first member owns all 8", |s| s[0].len() == 8);
    let b = member(&bootstrap, &group, &topic, &extra);
    poll_until(&[&a, &b], "two members split 8 partitions", |s| {
        split_exactly(s, 8)
    });
    let (sa, sb) = (assigned(&a), assigned(&b));
    assert_eq!(sa.len() + sb.len(), 8, "{sa:?} {sb:?}");
    // close() sends LeaveGroup: the group rebalances without waiting for a session timeout.
    close(b);
    poll_until(&[&a], "remaining member owns all 8", |s| s[0].len() == 8);
}

#[test]
fn two_consumers_split_eight_partitions_and_the_survivor_takes_all_range() {
    split_then_leave("range");
}

#[test]
fn cooperative_sticky_members_split_and_rebalance_incrementally() {
    split_then_leave("cooperative-sticky");
}

#[test]
fn roundrobin_members_split_eight_partitions() {
    split_then_leave("roundrobin");
}

fn produce_per_partition(bootstrap: &str, topic: &str, partitions: i32, per_partition: usize) {
    let mut c = base_config(bootstrap);
    c.set("message.timeout.ms", "15000").set("acks", "all");
    let p: BaseProducer = c.create().expect("producer");
    for part in 0..partitions {
        for i in 0..per_partition {
            let payload = format!("p{part}-{i}");
            p.send(
                BaseRecord::to(topic)
                    .partition(part)
                    .key("k")
                    .payload(&payload),
            )
            .expect("enqueue");
        }
    }
    p.flush(CLIENT_TIMEOUT).expect("flush");
}

#[test]
fn committed_offsets_survive_a_broker_sigkill_and_the_group_resumes_exactly() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("groups-resume");
    let group = topic_name("g-resume");
    create_topic_blocking(&bootstrap, &topic, 4);
    produce_per_partition(&bootstrap, &topic, 4, 10);

    let c1 = member(&bootstrap, &group, &topic, &[]);
    poll_until(&[&c1], "member owns all 4", |s| s[0].len() == 4);
    // Commit a different position per partition: 3, 4, 5, 6.
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, Offset::Offset(3 + p as i64))
            .unwrap();
    }
    c1.commit(&tpl, CommitMode::Sync).expect("commit");
    // The list librdkafka returns holds references to its partitions (and through
    // them to their leader broker): alive past the consumer, it makes the consumer's
    // destroy wait forever for that broker thread. Drop it first.
    {
        let committed = c1.committed(CLIENT_TIMEOUT).expect("committed");
        for e in committed.elements() {
            assert_eq!(e.offset(), Offset::Offset(3 + e.partition() as i64));
        }
    }
    c1.unsubscribe();
    poll_until(&[&c1], "member gave its partitions up", |s| s[0].is_empty());
    close(c1);
    broker.restart();

    let c2 = member(
        &bootstrap,
        &group,
        &topic,
        &[("enable.partition.eof", "true")],
    );
    // 10 per partition minus the committed positions 3+4+5+6.
    let want = 40 - (3 + 4 + 5 + 6);
    let msgs = consume_n(&c2, want, CONSUME_TIMEOUT);
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &msgs {
        first.entry(m.partition()).or_insert(m.offset());
    }
    let expected: BTreeMap<i32, i64> = (0..4).map(|p| (p, 3 + p as i64)).collect();
    assert_eq!(first, expected, "resumed exactly at the committed offsets");
    // And nothing before them was redelivered afterwards.
    assert!(msgs
        .iter()
        .all(|m| m.offset() >= 3 + m.partition() as i64 && m.offset() < 10));
    let distinct: BTreeSet<(i32, i64)> = msgs.iter().map(|m| (m.partition(), m.offset())).collect();
    assert_eq!(distinct.len(), want, "no duplicates");
}

/// Counts the rebalance callbacks (revoke or assign) a consumer goes through.
#[derive(Default)]
struct Rebalances(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn rebalances(c: &BaseConsumer<Rebalances>) -> usize {
    c.context().0.load(std::sync::atomic::Ordering::SeqCst)
}

/// Polls every consumer until `seen` holds `distinct` different (partition, offset)
/// pairs; every delivery is recorded, so duplicates stay visible.
fn consume_distinct<C: ConsumerContext>(
    consumers: &[&BaseConsumer<C>],
    seen: &mut Vec<(i32, i64)>,
    distinct: usize,
) {
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    loop {
        let have: BTreeSet<&(i32, i64)> = seen.iter().collect();
        if have.len() >= distinct {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumed {} of {distinct} distinct records within {CONSUME_TIMEOUT:?}",
            have.len()
        );
        for c in consumers {
            match c.poll(Duration::from_millis(20)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Ok(m)) => seen.push((m.partition(), m.offset())),
                Some(Err(e)) => eprintln!("consumer event while consuming: {e:?}"),
            }
        }
    }
}

/// DescribeGroups over the wire: state and (member id, client id, assignment) sorted.
fn describe_group(bootstrap: &str, group: &str) -> (String, Vec<(String, String, bytes::Bytes)>) {
    let mut wire = Wire::connect(bootstrap);
    let d = wire.call(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        5,
    );
    let g = &d.groups[0];
    assert_eq!(g.error_code, 0, "DescribeGroups error");
    let mut members: Vec<(String, String, bytes::Bytes)> = g
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.client_id.to_string(),
                m.member_assignment.clone(),
            )
        })
        .collect();
    members.sort();
    (g.group_state.to_string(), members)
}

/// Heartbeat error code for `member` claiming `generation` (0: it is that generation's
/// member; 22 ILLEGAL_GENERATION; 25 UNKNOWN_MEMBER_ID).
fn heartbeat_code(bootstrap: &str, group: &str, member: &str, generation: i32) -> i16 {
    let mut wire = Wire::connect(bootstrap);
    wire.call(
        &HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member)),
        3,
    )
    .error_code
}

/// Issue 4: group metadata (generation, members, assignments) is stored in
/// `__consumer_offsets` and loaded on start, so after a SIGKILL + restart of the broker
/// the members keep heartbeating into the same generation: no UNKNOWN_MEMBER_ID, no
/// rebalance, and consumption continues from the consumers' positions (the committed
/// offsets lag on purpose: a rebalance would redeliver from them and show duplicates).
#[test]
fn a_stable_group_keeps_its_generation_and_members_across_a_broker_sigkill() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("groups-persist");
    let group = topic_name("g-persist");
    create_topic_blocking(&bootstrap, &topic, 4);
    produce_per_partition(&bootstrap, &topic, 4, 10);

    let a = member_with(&bootstrap, &group, &topic, &[], Rebalances::default());
    let b = member_with(&bootstrap, &group, &topic, &[], Rebalances::default());
    poll_until(&[&a, &b], "two members split 4 partitions", |s| {
        split_exactly(s, 4)
    });
    let mut seen = Vec::new();
    consume_distinct(&[&a, &b], &mut seen, 40);
    // Commit offset 5 everywhere though 10 were read.
    for c in [&a, &b] {
        let mut tpl = TopicPartitionList::new();
        for p in assigned(c) {
            tpl.add_partition_offset(&topic, p, Offset::Offset(5))
                .unwrap();
        }
        c.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    let before = describe_group(&bootstrap, &group);
    assert_eq!(before.0, "Stable");
    assert_eq!(before.1.len(), 2);
    let probe = &before.1[0].0;
    // The generation is not in DescribeGroups: find it by Heartbeat (bounded probe).
    let generation = (1..=20)
        .find(|g| heartbeat_code(&bootstrap, &group, probe, *g) == 0)
        .expect("a generation in 1..=20 accepts the member's heartbeat");
    let rebalances_before = (rebalances(&a), rebalances(&b));

    broker.restart();

    let after = describe_group(&bootstrap, &group);
    assert_eq!(
        after, before,
        "same state, members and assignments after restart"
    );
    for (id, _, _) in &before.1 {
        assert_eq!(
            heartbeat_code(&bootstrap, &group, id, generation),
            0,
            "member {id} is still in generation {generation}"
        );
    }
    produce_per_partition(&bootstrap, &topic, 4, 10);
    consume_distinct(&[&a, &b], &mut seen, 80);
    let distinct: BTreeSet<(i32, i64)> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "no record delivered twice");
    let want: BTreeSet<(i32, i64)> = (0..4).flat_map(|p| (0..20).map(move |o| (p, o))).collect();
    assert_eq!(distinct, want);
    assert_eq!(
        (rebalances(&a), rebalances(&b)),
        rebalances_before,
        "no rebalance after the restart"
    );
    assert_eq!(describe_group(&bootstrap, &group), before);
    assert_eq!(heartbeat_code(&bootstrap, &group, probe, generation), 0);
    close(a);
    close(b);
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

#[test]
fn join_without_member_id_gets_one_and_group_errors_are_kafka_codes() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let mut wire = Wire::connect(&broker.bootstrap());

    let fc = wire.call(
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1"), s("g2")]),
        4,
    );
    assert_eq!(fc.coordinators.len(), 2);
    assert!(fc
        .coordinators
        .iter()
        .all(|c| c.error_code == 0 && c.port == broker.port() as i32));

    let join = |member: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s("g1")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from_static(b"\x00\x00"))])
    };
    // KIP-394: v4+ first join is refused with an id to use.
    let r = wire.call(&join(""), 5);
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let id = r.member_id.to_string();
    assert!(!id.is_empty());
    let r = wire.call(&join(&id), 5);
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader.as_str(), id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));

    let r = wire.call(&join("made-up"), 5);
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
    let hb = |gen: i32| {
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("g1")))
            .with_generation_id(gen)
            .with_member_id(s(&id))
    };
    assert_eq!(wire.call(&hb(7), 3).error_code, 22, "ILLEGAL_GENERATION");
    assert_eq!(wire.call(&hb(1), 3).error_code, 0);
    let bad = JoinGroupRequest::default()
        .with_group_id(GroupId(s("")))
        .with_session_timeout_ms(10_000)
        .with_protocol_type(s("consumer"));
    assert_eq!(wire.call(&bad, 5).error_code, 24, "INVALID_GROUP_ID");

    let del = wire.call(
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(s("g1")), GroupId(s("nope"))]),
        2,
    );
    assert_eq!(del.results[0].error_code, 68, "NON_EMPTY_GROUP");
    assert_eq!(del.results[1].error_code, 69, "GROUP_ID_NOT_FOUND");

    let d = wire.call(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g1")), GroupId(s("nope"))]),
        5,
    );
    assert_eq!(d.groups[0].group_state.as_str(), "CompletingRebalance");
    assert_eq!(d.groups[0].members.len(), 1);
    assert_eq!(d.groups[1].group_state.as_str(), "Dead");

    // Nothing committed: -1 for an asked partition (v8 multi-group form).
    let of = wire.call(
        &OffsetFetchRequest::default().with_groups(vec![
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("g1")))
                .with_topics(Some(vec![
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopics::default()
                        .with_name(kafka_protocol::messages::TopicName(s("t")))
                        .with_partition_indexes(vec![0]),
                ])),
        ]),
        8,
    );
    assert_eq!(of.groups.len(), 1);
    assert_eq!(of.groups[0].topics[0].partitions[0].committed_offset, -1);
}

/// A member that dies without LeaveGroup (kcat, SIGKILLed) stops heartbeating; the
/// coordinator expires it after session.timeout.ms and the survivor gets everything.
#[test]
fn a_member_that_stops_heartbeating_is_removed_after_its_session_timeout() {
    const SESSION_TIMEOUT_MS: u64 = 6000;
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("groups-expiry");
    let group = topic_name("g-expiry");
    create_topic_blocking(&bootstrap, &topic, 8);

    let mut doomed = std::process::Command::new("kcat")
        .args([
            "-b",
            &bootstrap,
            "-X",
            "broker.address.family=v4",
            "-G",
            &group,
            &topic,
            "-q",
        ])
        .args([
            "-X",
            &format!("session.timeout.ms={SESSION_TIMEOUT_MS}"),
            "-X",
            "heartbeat.interval.ms=300",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kcat must be installed (it is a test dependency)");
    let survivor = member(&bootstrap, &group, &topic, &[]);
    poll_until(&[&survivor], "survivor shares the topic with kcat", |s| {
        s[0].len() == 4
    });

    doomed.kill().expect("SIGKILL kcat");
    let _ = doomed.wait();
    let killed = Instant::now();
    poll_until(
        &[&survivor],
        "survivor owns all 8 after the dead member expires",
        |s| s[0].len() == 8,
    );
    let waited = killed.elapsed();
    // Nothing told the broker the member was gone but its silence: the hand-over is
    // bounded by the session timeout plus one rebalance.
    assert!(
        waited < Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(15),
        "dead member expired after {waited:?}"
    );
    close(survivor);
}

/// Commits `offset` for partitions 0 and 1 of `topic`.
fn commit_both(c: &BaseConsumer, topic: &str, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// OffsetFetch (v8) over the wire: the committed offsets of partitions 0 and 1 (-1: none).
fn committed_both(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopics,
    };
    let mut wire = Wire::connect(bootstrap);
    let of = wire.call(
        &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(kafka_protocol::messages::TopicName(s(topic)))
                .with_partition_indexes(vec![0, 1])]))]),
        8,
    );
    assert_eq!(of.groups[0].error_code, 0, "OffsetFetch error");
    of.groups[0].topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

/// ListGroups over the wire: the ids of the groups the broker holds.
fn listed_groups(bootstrap: &str) -> BTreeSet<String> {
    let mut wire = Wire::connect(bootstrap);
    let r = wire.call(&ListGroupsRequest::default(), 4);
    assert_eq!(r.error_code, 0, "ListGroups error");
    r.groups.iter().map(|g| g.group_id.to_string()).collect()
}

/// offsets.retention.minutes (KIP-211), with a retention of 2 s (`offsets.retention.ms`):
/// a consumer group whose last member left loses its committed offsets once it has
/// been Empty that long, and a group that only stored offsets (manual assignment)
/// loses them that long after the commit; both groups are then gone, and a SIGKILL and
/// restart does not bring them back (the expiry wrote tombstones). A group with a live
/// member keeps offsets older than the retention, across the restart too.
#[test]
fn committed_offsets_expire_once_a_group_is_empty_for_the_retention_and_stay_gone() {
    const RETENTION: Duration = Duration::from_secs(2);
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--offsets-retention-ms".into(),
            RETENTION.as_millis().to_string(),
            "--offsets-retention-check-interval-ms".into(),
            "200".into(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("groups-retention");
    create_topic_blocking(&bootstrap, &topic, 2);
    let kept = topic_name("g-kept");
    let emptied = topic_name("g-emptied");
    let standalone = topic_name("g-standalone");

    // The live group commits first: its offsets are the oldest when the others expire.
    let live = member(&bootstrap, &kept, &topic, &[]);
    poll_until(&[&live], "live member owns both partitions", |a| {
        a[0].len() == 2
    });
    commit_both(&live, &topic, 5);
    let leaving = member(&bootstrap, &emptied, &topic, &[]);
    poll_until(&[&live, &leaving], "second group's member owns both", |a| {
        a[1].len() == 2
    });
    commit_both(&leaving, &topic, 7);
    let storing = consumer(&bootstrap, &[("group.id", standalone.as_str())]);
    commit_both(&storing, &topic, 9);
    assert_eq!(committed_both(&bootstrap, &emptied, &topic), vec![7, 7]);
    assert_eq!(committed_both(&bootstrap, &standalone, &topic), vec![9, 9]);

    // The group becomes Empty after this instant (LeaveGroup), and the standalone
    // commit happened before it: neither may expire within RETENTION of it.
    let before_empty = Instant::now();
    leaving.unsubscribe();
    poll_until(&[&leaving], "member gave its partitions up", |a| {
        a[0].is_empty()
    });
    close(leaving);
    drop(storing);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Polling keeps the live member heartbeating.
        let _ = live.poll(Duration::from_millis(100));
        let emptied_now = committed_both(&bootstrap, &emptied, &topic);
        let standalone_now = committed_both(&bootstrap, &standalone, &topic);
        if emptied_now == [-1, -1] && standalone_now == [-1, -1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets not expired within 30 s: emptied {emptied_now:?}, standalone {standalone_now:?}"
        );
    }
    assert!(
        before_empty.elapsed() >= RETENTION,
        "expired before the retention ({:?})",
        before_empty.elapsed()
    );
    let groups = listed_groups(&bootstrap);
    assert!(
        !groups.contains(&emptied) && !groups.contains(&standalone),
        "expired groups are gone: {groups:?}"
    );
    assert!(groups.contains(&kept), "{groups:?}");
    assert_eq!(committed_both(&bootstrap, &kept, &topic), vec![5, 5]);

    // The expiry is durable; the live group comes back with its member and offsets.
    broker.restart();
    assert_eq!(committed_both(&bootstrap, &emptied, &topic), vec![-1, -1]);
    assert_eq!(
        committed_both(&bootstrap, &standalone, &topic),
        vec![-1, -1]
    );
    let groups = listed_groups(&bootstrap);
    assert!(
        !groups.contains(&emptied) && !groups.contains(&standalone),
        "expired groups stay gone after a restart: {groups:?}"
    );
    assert_eq!(committed_both(&bootstrap, &kept, &topic), vec![5, 5]);
    close(live);
}

/// Partition count of `__consumer_offsets` as rdkafka's Metadata request shows it.
fn offsets_topic_partitions(bootstrap: &str) -> usize {
    let c = consumer(bootstrap, &[]);
    let md = c
        .fetch_metadata(Some("__consumer_offsets"), CLIENT_TIMEOUT)
        .expect("metadata");
    let t = &md.topics()[0];
    assert!(t.error().is_none(), "__consumer_offsets: {:?}", t.error());
    t.partitions().len()
}

/// End offset (ListOffsets) of partition `p` of `__consumer_offsets`.
fn offsets_topic_end(bootstrap: &str, p: i32) -> i64 {
    consumer(bootstrap, &[])
        .fetch_watermarks("__consumer_offsets", p, CLIENT_TIMEOUT)
        .expect("watermarks")
        .1
}

/// A group name with `prefix` whose Kafka partition among `partitions` is `want`.
fn group_in_partition(prefix: &str, partitions: i32, want: i32) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|g| kafka_offsets_partition(g, partitions) == want)
        .expect("a group id for every partition within 10000 tries")
}

fn commit_one(bootstrap: &str, group: &str, topic: &str, offset: i64) {
    let c = consumer(bootstrap, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

fn committed_one(bootstrap: &str, group: &str, topic: &str) -> Offset {
    let c = consumer(bootstrap, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, CLIENT_TIMEOUT).expect("committed");
    let offset = got
        .find_partition(topic, 0)
        .expect("asked partition")
        .offset();
    offset
}

#[test]
fn offsets_topic_num_partitions_sizes_the_offsets_topic_once_and_groups_sit_where_kafka_puts_them()
{
    let args = |n: &str| vec!["--offsets-topic-num-partitions".to_string(), n.to_string()];
    // Two cores, three partitions: the shards do not divide the partitions.
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: args("3"),
        ..BrokerOptions::default().cores(2)
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("sized");
    create_topic_blocking(&bootstrap, &topic, 1);
    let prefix = topic_name("placed");
    let in_0 = group_in_partition(&prefix, 3, 0);
    let in_2 = group_in_partition(&prefix, 3, 2);
    commit_one(&bootstrap, &in_0, &topic, 7);
    commit_one(&bootstrap, &in_2, &topic, 9);
    assert_eq!(offsets_topic_partitions(&bootstrap), 3);
    // Each group's commit is in its Kafka partition and nowhere else.
    let ends: Vec<i64> = (0..3).map(|p| offsets_topic_end(&bootstrap, p)).collect();
    assert!(ends[0] > 0 && ends[1] == 0 && ends[2] > 0, "ends {ends:?}");

    // Another setting does not resize the existing topic: groups keep their partitions
    // and their offsets.
    broker.restart_with_args(args("5"));
    assert_eq!(offsets_topic_partitions(&bootstrap), 3);
    assert!(
        broker
            .log_tail(1 << 20)
            .contains("__consumer_offsets exists with 3 partitions and keeps them"),
        "no log line about the kept count"
    );
    assert_eq!(committed_one(&bootstrap, &in_0, &topic), Offset::Offset(7));
    assert_eq!(committed_one(&bootstrap, &in_2, &topic), Offset::Offset(9));
    commit_one(&bootstrap, &in_2, &topic, 10);
    assert_eq!(committed_one(&bootstrap, &in_2, &topic), Offset::Offset(10));
    assert_eq!(
        offsets_topic_end(&bootstrap, 1),
        0,
        "partition 1 stays empty"
    );
}

#[test]
fn offsets_topic_has_kafkas_default_of_50_partitions() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("sized-default");
    create_topic_blocking(&bootstrap, &topic, 1);
    let group = topic_name("default-placed");
    commit_one(&bootstrap, &group, &topic, 3);
    assert_eq!(offsets_topic_partitions(&bootstrap), 50);
    let p = kafka_offsets_partition(&group, 50);
    assert!(
        offsets_topic_end(&bootstrap, p) > 0,
        "{group} not in partition {p}"
    );
    assert_eq!(committed_one(&bootstrap, &group, &topic), Offset::Offset(3));
}
