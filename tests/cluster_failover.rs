//! Controller failure handling on a three-broker cluster (issue 7): SIGKILL a
//! partition's leader and the metadata leader moves leadership to another in-sync
//! replica with a higher leader epoch within seconds; a partition whose only in-sync
//! replica died goes offline (LEADER_NOT_AVAILABLE) instead of electing out of the
//! in-sync set, and comes back when that broker does; the killed broker is listed again
//! after its restart. A consumer group's coordinator is the leader of its offsets
//! partition and moves with it, committed offsets included.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, MetadataRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// Elections, the 3 s broker session timeout and a loaded CI box.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(40);
/// How long after the kill a new leader must be named: the session timeout (3 s), the
/// 0.5 s check, a metadata election if the killed broker was the controller (1–2 s,
/// then 3 s before it judges liveness), with room for a slow machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
const LEADER_NOT_AVAILABLE: i16 = 5;

#[derive(Clone, Debug, PartialEq)]
struct PartitionView {
    error: i16,
    leader: i32,
    epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline: Vec<i32>,
}

/// (broker ids listed, partition → view) as broker `bootstrap` itself reports `topic`
/// (raw Metadata v12 to exactly that broker). `None` while it does not know the topic.
fn view(bootstrap: &str, topic: &str) -> Option<(Vec<i32>, BTreeMap<i32, PartitionView>)> {
    let mut wire = Wire::connect(bootstrap);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let resp = wire.call(&req, 12);
    let t = resp.topics.first()?;
    if t.error_code != 0 {
        return None;
    }
    let ids = |v: &Vec<kafka_protocol::messages::BrokerId>| v.iter().map(|b| b.0).collect();
    let parts = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                PartitionView {
                    error: p.error_code,
                    leader: p.leader_id.0,
                    epoch: p.leader_epoch,
                    replicas: ids(&p.replica_nodes),
                    isr: ids(&p.isr_nodes),
                    offline: ids(&p.offline_replicas),
                },
            )
        })
        .collect();
    Some((resp.brokers.iter().map(|b| b.node_id.0).collect(), parts))
}

/// Polls `f` until it returns `Some`, at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same answer from every broker in `addrs`.
fn agreed(addrs: &[String], topic: &str) -> Option<(Vec<i32>, BTreeMap<i32, PartitionView>)> {
    let first = view(&addrs[0], topic)?;
    addrs[1..]
        .iter()
        .all(|a| view(a, topic).as_ref() == Some(&first))
        .then_some(first)
}

fn create(rt: &tokio::runtime::Runtime, bootstrap: &str, topic: &str, partitions: i32, rf: i32) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new()
        .operation_timeout(Some(CLIENT_TIMEOUT))
        .request_timeout(Some(CLIENT_TIMEOUT));
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(rf));
        let r = rt
            .block_on(admin.create_topics([&new], &opts))
            .expect("create_topics request")
            .remove(0);
        match r {
            Ok(_) => return,
            // No metadata leader yet, or not every broker registered yet.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            Err((_, code)) => panic!("create {topic}: {code:?}"),
        }
    }
}

#[test]
fn killed_leader_is_replaced_from_the_isr_with_a_higher_epoch_and_rejoins_after_restart() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    cluster.wait_registered();
    let replicated = topic_name("failover-rf3");
    create(&rt, &addrs[0], &replicated, 1, 3);
    // One partition per broker, each with no other copy.
    let single = topic_name("failover-rf1");
    create(&rt, &addrs[0], &single, 3, 1);
    let (_, before) = wait_for(
        "every broker to agree on the topic",
        CLUSTER_TIMEOUT,
        || agreed(&addrs, &replicated),
    );
    let old = before[&0].clone();
    assert_eq!(old.isr.len(), 3, "{old:?}");
    assert!(old.offline.is_empty(), "{old:?}");
    let victim = old.leader;
    let (_, singles) = wait_for("the RF=1 topic everywhere", CLUSTER_TIMEOUT, || {
        agreed(&addrs, &single)
    });
    let (&lonely, lonely_before) = singles
        .iter()
        .find(|(_, p)| p.leader == victim)
        .expect("placement gives every broker one RF=1 partition");

    // Acknowledged by every in-sync replica before the leader dies.
    let acks_all = producer(&cluster.bootstrap_all(), &[("acks", "all")]);
    rt.block_on(async {
        for i in 0..20 {
            let value = format!("before-{i}");
            let r = FutureRecord::to(&replicated)
                .partition(0)
                .payload(&value)
                .key("k");
            acks_all
                .send(r, CLIENT_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("produce before the kill: {e}"));
        }
    });
    drop(acks_all);

    cluster.node(victim).kill();
    let killed_at = Instant::now();
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != victim)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();
    let (brokers, after) = wait_for("a new leader from the ISR", FAILOVER_TIMEOUT, || {
        let (brokers, v) = agreed(&survivors, &replicated)?;
        (v[&0].leader != victim && v[&0].leader >= 0).then_some((brokers, v))
    });
    let new = &after[&0];
    eprintln!(
        "new leader {} (epoch {}) named {:?} after the kill",
        new.leader,
        new.epoch,
        killed_at.elapsed()
    );
    assert!(old.isr.contains(&new.leader), "{new:?} from {old:?}");
    assert!(new.epoch > old.epoch, "{new:?} after {old:?}");
    assert_eq!(new.error, 0);
    assert!(
        !new.isr.contains(&victim),
        "the dead broker left the ISR: {new:?}"
    );
    assert_eq!(new.replicas, old.replicas, "replica set unchanged");
    assert_eq!(new.offline, vec![victim]);
    assert!(
        !brokers.contains(&victim),
        "dead broker still listed: {brokers:?}"
    );

    // No unclean election: its only in-sync replica is gone, so it has no leader.
    let (_, singles) = wait_for("the RF=1 partition offline", FAILOVER_TIMEOUT, || {
        let (b, v) = agreed(&survivors, &single)?;
        (v[&lonely].leader == -1).then_some((b, v))
    });
    let offline = &singles[&lonely];
    assert_eq!(offline.error, LEADER_NOT_AVAILABLE, "{offline:?}");
    assert_eq!(offline.isr, vec![victim], "ISR kept while offline");

    // A real client follows the new leader.
    let producer = producer(&cluster.bootstrap_all(), &[("acks", "1")]);
    rt.block_on(async {
        let r = FutureRecord::to(&replicated)
            .partition(0)
            .payload("after")
            .key("k");
        producer
            .send(r, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to the new leader: {e}"));
    });
    let metadata = rdkafka::producer::Producer::client(&producer)
        .fetch_metadata(Some(&replicated), CLIENT_TIMEOUT)
        .expect("rdkafka metadata");
    assert_eq!(metadata.topics()[0].partitions()[0].leader(), new.leader);
    drop(producer);
    // Nothing acknowledged was lost with the old leader.
    let c = consumer(&survivors.join(","), &[]);
    assign(&c, &replicated, &[0], rdkafka::Offset::Beginning);
    let got: Vec<String> = consume_at_least_to_end(&c, &[0], 21, CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    let mut want: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    want.push("after".to_string());
    assert_eq!(
        got, want,
        "the new leader has every acknowledged record, in order"
    );
    drop(c);

    // Back with its data dir: listed again, and the offline partition has its only
    // in-sync replica again, so it leads it with a new epoch.
    cluster.node(victim).restart();
    wait_for(
        "the restarted broker listed and leading its RF=1 partition",
        CLUSTER_TIMEOUT,
        || {
            let (brokers, v) = agreed(&addrs, &single)?;
            let p = &v[&lonely];
            (brokers == vec![1, 2, 3] && p.leader == victim && p.error == 0 && p.offline.is_empty())
                .then_some(())
        },
    );
    let (_, v) = agreed(&addrs, &single).expect("agreement holds");
    assert!(
        v[&lonely].epoch > offline.epoch && offline.epoch > lonely_before.epoch,
        "epochs {} -> {} -> {}",
        lonely_before.epoch,
        offline.epoch,
        v[&lonely].epoch
    );
    // The replicated partition keeps its new leader (no flapping back).
    let (_, v) = agreed(&addrs, &replicated).expect("agreement holds");
    assert_eq!(v[&0].leader, new.leader);
    assert_eq!(v[&0].epoch, new.epoch);
    let isr_before = v[&0].isr.clone();

    // A restart quicker than the session timeout moves leadership too: the broker comes
    // back with a new incarnation and its replication state lost, so it may not lead on
    // its old registration.
    cluster.node(new.leader).restart();
    let (_, v) = wait_for(
        "leadership to leave the restarted broker",
        FAILOVER_TIMEOUT,
        || {
            let (b, v) = agreed(&addrs, &replicated)?;
            (v[&0].leader >= 0 && v[&0].leader != new.leader).then_some((b, v))
        },
    );
    assert!(v[&0].epoch > new.epoch, "{:?} after {new:?}", v[&0]);
    assert!(
        isr_before.contains(&v[&0].leader),
        "{:?} from ISR {isr_before:?}",
        v[&0]
    );
}

/// (error, node id, port) FindCoordinator (v3) answers on exactly `bootstrap` for `group`.
fn find_coordinator(bootstrap: &str, group: &str) -> (i16, i32, i32) {
    let mut wire = Wire::connect(bootstrap);
    let req = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let r = wire.call(&req, 3);
    (r.error_code, r.node_id.0, r.port)
}

/// The group-level error of OffsetFetch (v5) for `group` on exactly `bootstrap`.
fn offset_fetch_error(bootstrap: &str, group: &str, topic: &str) -> i16 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let mut wire = Wire::connect(bootstrap);
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes(vec![0])]));
    wire.call(&req, 5).error_code
}

/// Commits `offset` for partition 0 of `topic` as `group` through a client that knows
/// `bootstrap`, retrying while the coordinator moves.
fn commit(bootstrap: &str, group: &str, topic: &str, offset: i64) {
    let c = consumer(bootstrap, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    wait_for("a commit through the coordinator", CLUSTER_TIMEOUT, || {
        c.commit(&tpl, CommitMode::Sync).ok()
    });
}

/// The committed offset of partition 0 of `topic` for `group` (`None`: nothing).
fn committed(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    let c = consumer(bootstrap, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = wait_for(
        "committed offsets from the coordinator",
        CLUSTER_TIMEOUT,
        || c.committed_offsets(tpl.clone(), CLIENT_TIMEOUT).ok(),
    );
    match got
        .find_partition(topic, 0)
        .expect("asked partition")
        .offset()
    {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[test]
fn group_coordinator_moves_with_the_offsets_partition_leader() {
    const NOT_COORDINATOR: i16 = 16;
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let ports: Vec<i32> = cluster.brokers.iter().map(|b| b.port() as i32).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    cluster.wait_registered();
    let topic = topic_name("coordinated");
    create(&rt, &addrs[0], &topic, 1, 3);
    let group = topic_name("group");

    // Every broker names the same coordinator: the leader of the group's partition of
    // the offsets topic, created on first use with three replicas.
    let coordinator = wait_for(
        "one coordinator named by every broker",
        CLUSTER_TIMEOUT,
        || {
            let answers: Vec<_> = addrs.iter().map(|a| find_coordinator(a, &group)).collect();
            let first = answers[0];
            (first.0 == 0 && answers.iter().all(|a| *a == first)).then_some(first.1)
        },
    );
    assert_eq!(
        find_coordinator(&addrs[0], &group).2,
        ports[(coordinator - 1) as usize]
    );
    let (_, offsets) = wait_for("the offsets topic everywhere", CLUSTER_TIMEOUT, || {
        agreed(&addrs, "__consumer_offsets")
    });
    for p in offsets.values() {
        assert_eq!(p.replicas.len(), 3, "offsets topic replication: {p:?}");
    }
    // offsets.topic.num.partitions' default; the coordinator leads the group's
    // partition by Kafka's rule.
    assert_eq!(offsets.len(), 50);
    let placed = &offsets[&kafka_offsets_partition(&group, 50)];
    assert_eq!(placed.leader, coordinator, "{placed:?}");
    let old_isr = placed.isr.clone();

    commit(&cluster.bootstrap_all(), &group, &topic, 42);
    assert_eq!(
        committed(&cluster.bootstrap_all(), &group, &topic),
        Some(42)
    );
    // Only the coordinator serves the group.
    for id in (1..=3).filter(|id| *id != coordinator) {
        assert_eq!(
            offset_fetch_error(&addrs[(id - 1) as usize], &group, &topic),
            NOT_COORDINATOR,
            "broker {id} is not the coordinator"
        );
    }
    assert_eq!(
        offset_fetch_error(&addrs[(coordinator - 1) as usize], &group, &topic),
        0
    );

    // Kill the coordinator: the offsets partition gets a new leader from its ISR, which
    // loads the group's partition and coordinates it.
    cluster.node(coordinator).kill();
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != coordinator)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();
    let moved = wait_for("a new coordinator", FAILOVER_TIMEOUT, || {
        let a = find_coordinator(&survivors[0], &group);
        (a.0 == 0 && a.1 != coordinator && find_coordinator(&survivors[1], &group) == a)
            .then_some(a.1)
    });
    assert!(
        old_isr.contains(&moved),
        "{moved} not from the ISR {old_isr:?}"
    );
    let survivors_bootstrap = survivors.join(",");
    // The commit was replicated before it was acknowledged: the new coordinator has it.
    assert_eq!(committed(&survivors_bootstrap, &group, &topic), Some(42));
    commit(&survivors_bootstrap, &group, &topic, 43);
    assert_eq!(committed(&survivors_bootstrap, &group, &topic), Some(43));
    let not_moved = (1..=3)
        .find(|id| *id != coordinator && *id != moved)
        .unwrap();
    assert_eq!(
        offset_fetch_error(&addrs[(not_moved - 1) as usize], &group, &topic),
        NOT_COORDINATOR
    );

    // The old coordinator comes back as a follower: it does not take the group back.
    cluster.node(coordinator).restart();
    wait_for("the restarted broker listed again", CLUSTER_TIMEOUT, || {
        (raw_cluster_view(&addrs[0]).1.len() == 3).then_some(())
    });
    // Its replayed image still names it leader: until it has caught up (its new
    // registration applied) it names no coordinator rather than itself.
    let named = wait_for(
        "a coordinator named by the restarted broker",
        CLUSTER_TIMEOUT,
        || {
            let a = find_coordinator(&addrs[(coordinator - 1) as usize], &group);
            (a.0 == 0).then_some(a.1)
        },
    );
    assert_eq!(named, moved);
    assert_eq!(
        offset_fetch_error(&addrs[(coordinator - 1) as usize], &group, &topic),
        NOT_COORDINATOR
    );
    assert_eq!(
        committed(&cluster.bootstrap_all(), &group, &topic),
        Some(43)
    );
}

#[test]
fn subscribed_consumer_follows_its_coordinator_to_another_broker() {
    let options = BrokerOptions {
        extra_args: vec![
            "--group-initial-rebalance-delay-ms".into(),
            "0".into(),
            "--offsets-topic-replication-factor".into(),
            "2".into(),
        ],
        ..BrokerOptions::default()
    };
    let mut cluster = Cluster::start(3, options);
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    cluster.wait_registered();
    let topic = topic_name("subscribed");
    create(&rt, &addrs[0], &topic, 1, 3);
    let group = topic_name("members");
    let c = consumer(
        &cluster.bootstrap_all(),
        &[
            ("group.id", &group),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ],
    );
    c.subscribe(&[&topic]).unwrap();
    // Commits need a live membership in the current generation; retried while the
    // member (re)joins.
    let commit_as_member = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
            .unwrap();
        wait_for("a commit as a group member", CLUSTER_TIMEOUT, || {
            let _ = c.poll(Duration::from_millis(100));
            let assigned = c.assignment().ok()?.count() == 1;
            (assigned && c.commit(&tpl, CommitMode::Sync).is_ok()).then_some(())
        })
    };
    commit_as_member(5);
    let coordinator = find_coordinator(&addrs[0], &group).1;
    let (_, offsets) = agreed(&addrs, "__consumer_offsets").expect("offsets topic everywhere");
    for p in offsets.values() {
        assert_eq!(
            p.replicas.len(),
            2,
            "offsets.topic.replication.factor=2: {p:?}"
        );
    }
    assert_eq!(committed(&cluster.bootstrap_all(), &group, &topic), Some(5));

    cluster.node(coordinator).kill();
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != coordinator)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();
    assert_eq!(committed(&survivors.join(","), &group, &topic), Some(5));
    // The member finds the new coordinator and commits again in a current generation.
    commit_as_member(6);
    let moved = find_coordinator(&survivors[0], &group);
    assert_eq!(moved.0, 0);
    assert_ne!(moved.1, coordinator);
    assert_eq!(committed(&survivors.join(","), &group, &topic), Some(6));
    assert_eq!(
        c.assignment().unwrap().count(),
        1,
        "still assigned the partition"
    );
}

/// One idempotent batch of `n` records with sequences `base_seq..`, each valued
/// `p{partition}-{sequence}` plus `pad` bytes.
fn idempotent_batch(
    partition: i32,
    (pid, epoch): (i64, i16),
    base_seq: i32,
    n: i32,
    pad: usize,
) -> bytes::Bytes {
    use kafka_protocol::records::{Record, TimestampType};
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: base_seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(format!(
                "p{partition}-{:09}-{}",
                base_seq + i,
                "x".repeat(pad)
            ))),
            headers: Default::default(),
        })
        .collect();
    let buf = encode_uncompressed(&records);
    buf
}

/// acks=all Produce of one batch to exactly `wire`'s broker: (error code, base offset).
fn produce_to(wire: &mut Wire, topic: &str, partition: i32, batch: bytes::Bytes) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let req = kafka_protocol::messages::ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name_of(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let p = &wire.call(&req, 9).responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Issue 7 (found by cluster_chaos): an idempotent producer's next batch is accepted by
/// the new leader the moment it takes over, and a retry is answered as a duplicate.
/// The followers' producer state must have followed the replicated log: here both
/// were restarted mid-stream (so each rebuilt its state from an older log end), and
/// the batches arrive while the new leader applies the election, partition by
/// partition. Raw Produce requests hammer both survivors, so one lands in that window.
#[test]
fn idempotent_producer_continues_its_sequences_on_the_new_leader() {
    const PARTITIONS: i32 = 3;
    const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    cluster.wait_registered();
    let topic = topic_name("failover-idem");
    create_replicated_with(
        &addrs[0],
        &topic,
        PARTITIONS,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("create an RF=3 topic");
    let in_sync = |addrs: &[String]| {
        wait_for(
            "every partition led and fully in sync",
            CLUSTER_TIMEOUT,
            || {
                let (_, v) = agreed(addrs, &topic)?;
                v.values()
                    .all(|p| p.leader >= 0 && p.isr.len() == 3)
                    .then_some(v)
            },
        )
    };
    in_sync(&addrs);
    let init = Wire::connect(&addrs[0]).call(
        &kafka_protocol::messages::InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
        4,
    );
    assert_eq!(init.error_code, 0, "InitProducerId");
    let producer = (init.producer_id.0, init.producer_epoch);
    // Per partition: next sequence, and every acknowledged (first sequence, count, base offset).
    let mut next = [0i32; PARTITIONS as usize];
    let mut acked: Vec<Vec<(i32, i32, i64)>> = vec![Vec::new(); PARTITIONS as usize];
    // acks=all to each partition's leader; retried (the same batch) while a restarted
    // broker's leaderships move.
    let mut produce_to_leaders = |addrs: &[String], batches: usize, n: i32, pad: usize| {
        for p in 0..PARTITIONS {
            let i = p as usize;
            for _ in 0..batches {
                let batch = idempotent_batch(p, producer, next[i], n, pad);
                let base = wait_for("an acknowledged batch", CLUSTER_TIMEOUT, || {
                    let (_, v) = agreed(addrs, &topic)?;
                    let leader = v[&p].leader;
                    if leader < 0 {
                        return None;
                    }
                    let mut w = Wire::connect(&addrs[(leader - 1) as usize]);
                    match produce_to(&mut w, &topic, p, batch.clone()) {
                        (0, base) => Some(base),
                        (5 | 6 | 7 | 19 | 20, _) => None,
                        (code, _) => panic!("partition {p} sequence {}: error {code}", next[i]),
                    }
                });
                acked[i].push((next[i], n, base));
                next[i] += n;
            }
        }
    };
    produce_to_leaders(&addrs, 3, 10, 10);
    // Both followers of partition 0 restart: each rebuilds its producer state from
    // what its log holds now, then follows again while the leader writes on.
    let (_, v) = agreed(&addrs, &topic).expect("agreement");
    for id in v[&0].replicas.clone() {
        if id != v[&0].leader {
            cluster.node(id).kill();
            cluster.node(id).restart();
            in_sync(&addrs);
        }
    }
    // Big batches: the survivors have megabytes of log per partition to take over.
    produce_to_leaders(&addrs, 20, 1000, 100);
    let victim = agreed(&addrs, &topic).expect("agreement").1[&0].leader;
    cluster.node(victim).kill();
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != victim)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();

    const AFTER: usize = 20;
    let deadline = Instant::now() + FAILOVER_TIMEOUT + CLUSTER_TIMEOUT;
    std::thread::scope(|s| {
        for ((p, next), acked) in (0..PARTITIONS).zip(next.iter_mut()).zip(acked.iter_mut()) {
            let (survivors, topic) = (&survivors, &topic);
            s.spawn(move || {
                let mut wires: Vec<Wire> = survivors.iter().map(|a| Wire::connect(a)).collect();
                let (mut at, mut done) = (0, 0);
                while done < AFTER {
                    assert!(
                        Instant::now() < deadline,
                        "partition {p}: {done} of {AFTER} batches acknowledged after the failover"
                    );
                    let batch = idempotent_batch(p, producer, *next, 5, 10);
                    match produce_to(&mut wires[at], topic, p, batch) {
                        (0, base) => {
                            acked.push((*next, 5, base));
                            *next += 5;
                            done += 1;
                        }
                        (OUT_OF_ORDER_SEQUENCE_NUMBER, _) => panic!(
                            "partition {p}: sequence {} refused as out of order by {} after the \
                             failover: its producer state disagrees with its log",
                            *next, survivors[at]
                        ),
                        // Not (yet) the leader, the in-sync set settling, no ack in time:
                        // the same batch again, to the other survivor too.
                        (5 | 6 | 7 | 19 | 20, _) => {
                            at = (at + 1) % wires.len();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        (code, _) => panic!("partition {p}: produce error {code}"),
                    }
                }
            });
        }
    });

    // Every acknowledged record once, at its acknowledged offset, nothing else.
    let c = consumer(&survivors.join(","), &[]);
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    assign(&c, &topic, &parts, rdkafka::Offset::Beginning);
    let read = consume_to_end(&c, &parts, CONSUME_TIMEOUT);
    let mut stored: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for m in &read {
        use rdkafka::message::Message;
        let value = payload_str(m);
        let seq = value.split('-').nth(1).expect("sequence in the value");
        assert!(
            stored
                .insert((m.partition(), m.offset()), seq.to_string())
                .is_none(),
            "offset read twice"
        );
    }
    let mut want: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for (p, batches) in acked.iter().enumerate() {
        for (seq, n, base) in batches {
            for i in 0..*n {
                want.insert((p as i32, base + i64::from(i)), format!("{:09}", seq + i));
            }
        }
    }
    assert_eq!(stored.len(), want.len(), "records stored vs acknowledged");
    assert!(
        stored == want,
        "every acknowledged record once, at its offset"
    );
}
