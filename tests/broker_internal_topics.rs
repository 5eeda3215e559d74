//! `__consumer_offsets` belongs to the group coordinator: a client's Produce to it gets
//! INVALID_TOPIC_EXCEPTION (17) as on Kafka ("Cannot append to internal topic"), so a
//! forged commit never takes effect, while commits through the group APIs still work.
//! And a batch in it that cannot be decoded (a correct CRC over a record count that
//! lies, as data written before the guard may hold) is skipped at group load: every
//! other group of the partition still loads.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use glommio::LocalExecutorBuilder;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use runnel::group::store::{offset_key, offset_value};
use runnel::segment::compact::Codec;
use runnel::segment::testing::{encode_keyed_batch, encode_record, encode_records_batch};
use runnel::segment::{Durability, LogConfig, PartitionLog};

const INVALID_TOPIC_EXCEPTION: i16 = 17;
const OFFSETS: &str = "__consumer_offsets";

/// One partition of `__consumer_offsets`: every group's records sit in partition 0.
fn broker() -> Broker {
    Broker::start_with(BrokerOptions {
        extra_args: vec!["--offsets-topic-num-partitions".into(), "1".into()],
        ..BrokerOptions::default()
    })
}

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    consumer(bootstrap, &[("group.id", group)])
}

fn commit(bootstrap: &str, group: &str, topic: &str, offset: i64) {
    let c = group_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// The group's committed offset of `topic`-0, waiting out COORDINATOR_LOAD_IN_PROGRESS
/// until `deadline`; `None` when the group has none.
fn committed(bootstrap: &str, group: &str, topic: &str, timeout: Duration) -> Option<i64> {
    let c = group_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let deadline = Instant::now() + timeout;
    loop {
        match c.committed_offsets(tpl.clone(), CLIENT_TIMEOUT) {
            Ok(got) => {
                return match got.elements()[0].offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "committed offsets of {group}: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// An offset-commit record batch for (group, topic-0) at `offset`, as the coordinator
/// writes them.
fn commit_batch(group: &str, topic: &str, offset: i64) -> Bytes {
    let key = offset_key(group, topic, 0).to_vec();
    let value = offset_value(offset, -1, "", 1_700_000_000_000).to_vec();
    encode_keyed_batch(
        0,
        1_700_000_000_000,
        &[(Some(key), Some(value))],
        Codec::None,
    )
}

#[test]
fn a_client_produce_to_consumer_offsets_is_refused_and_a_forged_commit_never_applies() {
    let mut broker = broker();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("victim-data");
    create_topic_blocking(&bootstrap, &topic, 1);
    // A real commit through the group APIs creates the offsets topic and works.
    commit(&bootstrap, "victim", &topic, 5);
    assert_eq!(
        committed(&bootstrap, "victim", &topic, CONSUME_TIMEOUT),
        Some(5)
    );

    // A forged commit for the victim group, produced straight to the topic.
    let forged = commit_batch("victim", &topic, 999);
    assert_eq!(
        raw_produce_records(&bootstrap, OFFSETS, 0, forged.clone()),
        INVALID_TOPIC_EXCEPTION
    );
    // Other internal names too, existing or not.
    for name in ["__transaction_state", "__share_group_state"] {
        assert_eq!(
            raw_produce_records(&bootstrap, name, 0, forged.clone()),
            INVALID_TOPIC_EXCEPTION,
            "{name}"
        );
    }

    // The forged record is not in the log: after a restart (a replay of the topic) the
    // victim still has its own commit, and commits keep working.
    broker.restart();
    assert_eq!(
        committed(&bootstrap, "victim", &topic, CONSUME_TIMEOUT),
        Some(5)
    );
    commit(&bootstrap, "victim", &topic, 6);
    assert_eq!(
        committed(&bootstrap, "victim", &topic, CONSUME_TIMEOUT),
        Some(6)
    );
}

/// Appends `batches` to the partition log in `dir` (the broker stopped), as data written
/// there before produce refused them would be.
fn append_offline(dir: PathBuf, batches: Vec<Bytes>) {
    LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            let log = PartitionLog::open(dir, LogConfig::default())
                .await
                .expect("open the offsets partition");
            for b in batches {
                log.append(b, Durability::Durable)
                    .await
                    .expect("append offline");
            }
            log.close().await.expect("close");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_stored_offsets_batch_whose_record_count_lies_is_skipped_and_every_other_group_loads() {
    let mut broker = broker();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("replay-data");
    create_topic_blocking(&bootstrap, &topic, 1);
    commit(&bootstrap, "before-the-lie", &topic, 7);
    assert_eq!(
        committed(&bootstrap, "before-the-lie", &topic, CONSUME_TIMEOUT),
        Some(7)
    );
    assert!(broker.terminate(Duration::from_secs(30)), "clean stop");

    // A commit record whose header count says 2^30 (none follow), in a batch with a
    // correct CRC; then a valid commit of another group after it.
    let key = offset_key("the-lie", &topic, 0);
    let value = offset_value(3, -1, "", 1_700_000_000_000);
    let lying = encode_records_batch(
        &encode_record(Some(&key), Some(&value), 0, 1 << 30),
        1,
        Codec::None,
    );
    let dir = broker
        .data_dir()
        .join("topics")
        .join(format!("{OFFSETS}-0"));
    append_offline(dir, vec![lying, commit_batch("after-the-lie", &topic, 11)]);

    broker.restart();
    assert_eq!(
        committed(&bootstrap, "before-the-lie", &topic, CONSUME_TIMEOUT),
        Some(7),
        "a group committed before the undecodable batch loads"
    );
    assert_eq!(
        committed(&bootstrap, "after-the-lie", &topic, CONSUME_TIMEOUT),
        Some(11),
        "a group committed after it loads"
    );
    assert_eq!(
        committed(&bootstrap, "the-lie", &topic, CONSUME_TIMEOUT),
        None,
        "nothing of the skipped batch applies"
    );
    let log = broker.log_tail(64 << 10);
    assert!(
        log.contains("undecodable offsets batch skipped"),
        "the skip is reported: {log}"
    );
    // The coordinator keeps working on that partition.
    commit(&bootstrap, "after-the-lie", &topic, 12);
    assert_eq!(
        committed(&bootstrap, "after-the-lie", &topic, CONSUME_TIMEOUT),
        Some(12)
    );
}
