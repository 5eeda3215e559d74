//! Issue 7's network-partition must-show. Three brokers reach each other only through
//! proxies the test controls (`Cluster::start_proxied`). Cutting the partition leader
//! off from the other two: the leader, now a minority of one, acknowledges no acks=all
//! write; the majority elects a new leader and takes writes; when the network heals the
//! old leader drops its unacknowledged tail and follows, and nothing acknowledged is
//! lost.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;

const BROKERS: usize = 3;

/// Sends `values` to partition 0, waiting for each; Ok(offset) or the error text.
fn send_all(producer: &FutureProducer, topic: &str, values: &[String]) -> Vec<Result<i64, String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let futures: Vec<_> = values
            .iter()
            .map(|v| {
                producer.send(
                    FutureRecord::<(), str>::to(topic).partition(0).payload(v),
                    Duration::from_secs(0),
                )
            })
            .collect();
        let mut out = Vec::new();
        for f in futures {
            out.push(match f.await {
                Ok(delivery) => Ok(delivery.offset),
                Err((e, _)) => Err(e.to_string()),
            });
        }
        out
    })
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

#[test]
fn isolated_leader_takes_no_acks_all_write_majority_moves_on_and_nothing_acked_is_lost() {
    let mut cluster = Cluster::start_proxied(BROKERS, BrokerOptions::default());
    cluster.wait_registered();
    let topic = topic_name("netsplit");
    create_replicated_with(
        &cluster.brokers[0].bootstrap(),
        &topic,
        1,
        BROKERS as i32,
        &[("min.insync.replicas", "2")],
    )
    .expect("create an RF=3 topic");
    let view = wait_for("replicas in sync", CLUSTER_TIMEOUT, || {
        topic_view(&cluster.brokers[0].bootstrap(), &topic)
            .filter(|v| v[&0].0 >= 0 && v[&0].2.len() == BROKERS)
    });
    let old_leader = view[&0].0;
    let leader_addr = cluster.node(old_leader).bootstrap();
    let majority: Vec<String> = cluster
        .brokers
        .iter()
        .filter(|b| b.bootstrap() != leader_addr)
        .map(|b| b.bootstrap())
        .collect();

    let all = cluster.bootstrap_all();
    let before = values("before", 300);
    let p = producer(&all, &[("acks", "all"), ("enable.idempotence", "true")]);
    for r in send_all(&p, &topic, &before) {
        r.expect("acked before the split");
    }

    cluster.isolate(old_leader);
    // Sent to the old leader itself (a client library would move to the majority's
    // new leader): it cannot reach the in-sync followers, so acks=all must fail.
    for _ in 0..3 {
        let code = raw_produce_code(&leader_addr, &topic, 0, -1, 3000);
        assert_ne!(
            code, 0,
            "the isolated leader acknowledged an acks=all write"
        );
    }
    // The majority elects a leader among the other two, with a later epoch.
    let new_view = wait_for("a new leader on the majority side", CLUSTER_TIMEOUT, || {
        topic_view(&majority[0], &topic).filter(|v| v[&0].0 >= 0 && v[&0].0 != old_leader)
    });
    let new_leader = new_view[&0].0;
    eprintln!("leader {old_leader} isolated; broker {new_leader} leads now");
    let during = values("during", 300);
    let q = producer(
        &majority.join(","),
        &[("acks", "all"), ("enable.idempotence", "true")],
    );
    for r in send_all(&q, &topic, &during) {
        r.expect("the majority acknowledges writes");
    }

    cluster.heal();
    wait_for("the old leader back in sync", CLUSTER_TIMEOUT * 2, || {
        topic_view(&majority[0], &topic).filter(|v| v[&0].2.contains(&old_leader))
    });
    let after = values("after", 100);
    for r in send_all(&q, &topic, &after) {
        r.expect("acked after healing");
    }

    // Everything acknowledged is there once, in order; the minority's writes are not.
    let reader = consumer(&all, &[]);
    assign(&reader, &topic, &[0], Offset::Beginning);
    let read: Vec<String> = consume_to_end(&reader, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    let expected: Vec<String> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    assert_eq!(read, expected);
    assert_eq!(read.iter().collect::<HashSet<_>>().len(), read.len());
    drop(reader);
    drop((p, q));

    // The old leader truncated its divergent tail: every replica holds the same batches.
    for b in cluster.brokers.iter_mut() {
        assert!(b.terminate(Duration::from_secs(30)), "clean stop");
    }
    let reference = dump_partition(cluster.node(new_leader).data_dir(), &topic, 0);
    for id in 1..=BROKERS as i32 {
        let l = dump_partition(cluster.node(id).data_dir(), &topic, 0);
        assert_eq!(
            l, reference,
            "broker {id} differs from the leader {new_leader}"
        );
    }
}
