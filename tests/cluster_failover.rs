//! Controller failure handling on a three-broker cluster (issue 7): SIGKILL a
//! partition's leader and the metadata leader moves leadership to another in-sync
//! replica with a higher leader epoch within seconds; a partition whose only in-sync
//! replica died goes offline (LEADER_NOT_AVAILABLE) instead of electing out of the
//! in-sync set, and comes back when that broker does; the killed broker is listed again
//! after its restart.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;

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
    wait_for("all three brokers registered", CLUSTER_TIMEOUT, || {
        addrs
            .iter()
            .all(|a| raw_cluster_view(a).1.len() == 3 && raw_cluster_view(a).0 > 0)
            .then_some(())
    });
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
}
