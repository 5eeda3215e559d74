//! OffsetDelete (API 47, KIP-496) through librdkafka's own admin call
//! (`rd_kafka_DeleteConsumerGroupOffsets`; the rdkafka crate does not wrap it, and
//! confluent-kafka 2.16's Python AdminClient has no such method).

mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

const GROUP_SUBSCRIBED_TO_TOPIC: RDKafkaRespErr =
    RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_SUBSCRIBED_TO_TOPIC;
const NO_ERROR: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR;

/// Deletes `group`'s offsets of `parts`; Err(top-level code) or the per-partition codes.
fn delete_offsets(
    bootstrap: &str,
    group: &str,
    parts: &[(&str, i32)],
) -> Result<Vec<RDKafkaRespErr>, RDKafkaRespErr> {
    let admin = admin(bootstrap);
    let rk = admin.inner().native_ptr();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let group_c = CString::new(group).unwrap();
    // SAFETY: librdkafka's documented admin call sequence; every object created here
    // is destroyed here, and the result is read before its event is destroyed.
    unsafe {
        let mut del = rd::rd_kafka_DeleteConsumerGroupOffsets_new(group_c.as_ptr(), tpl.ptr());
        let q = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DeleteConsumerGroupOffsets(rk, &mut del, 1, std::ptr::null(), q);
        let ev = rd::rd_kafka_queue_poll(q, CLIENT_TIMEOUT.as_millis() as i32);
        assert!(
            !ev.is_null(),
            "no DeleteConsumerGroupOffsets result in time"
        );
        assert_eq!(
            rd::rd_kafka_event_type(ev),
            rd::RD_KAFKA_EVENT_DELETECONSUMERGROUPOFFSETS_RESULT
        );
        let result = (|| {
            let top = rd::rd_kafka_event_error(ev);
            if top != NO_ERROR {
                return Err(top);
            }
            let res = rd::rd_kafka_event_DeleteConsumerGroupOffsets_result(ev);
            let mut n = 0usize;
            let groups = rd::rd_kafka_DeleteConsumerGroupOffsets_result_groups(res, &mut n);
            assert_eq!(n, 1);
            let g = *groups;
            let gerr = rd::rd_kafka_group_result_error(g);
            if !gerr.is_null() {
                return Err(rd::rd_kafka_error_code(gerr));
            }
            let list = &*rd::rd_kafka_group_result_partitions(g);
            Ok((0..list.cnt as usize)
                .map(|i| (*list.elems.add(i)).err)
                .collect())
        })();
        rd::rd_kafka_event_destroy(ev);
        rd::rd_kafka_DeleteConsumerGroupOffsets_destroy(del);
        rd::rd_kafka_queue_destroy(q);
        result
    }
}

fn committed(c: &BaseConsumer, parts: &[(&str, i32)]) -> Vec<Offset> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    c.committed_offsets(tpl, CLIENT_TIMEOUT)
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect()
}

#[test]
fn offset_delete_refuses_subscribed_topics_and_deletes_the_rest_durably() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let (subscribed, other) = (topic_name("offdel"), topic_name("offdel-other"));
    create_topic_blocking(&bootstrap, &subscribed, 2);
    create_topic_blocking(&bootstrap, &other, 1);
    let group = topic_name("offdel-group");

    let mut cfg = base_config(&bootstrap);
    cfg.set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300");
    let c: BaseConsumer = cfg.create().unwrap();
    c.subscribe(&[&subscribed]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "member never got its partitions");
        match c.poll(Duration::from_millis(50)) {
            None | Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => eprintln!("while joining: {e:?}"),
        }
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&subscribed, 0, Offset::Offset(5))
        .unwrap();
    tpl.add_partition_offset(&subscribed, 1, Offset::Offset(6))
        .unwrap();
    tpl.add_partition_offset(&other, 0, Offset::Offset(7))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    let all = [
        (subscribed.as_str(), 0),
        (subscribed.as_str(), 1),
        (other.as_str(), 0),
    ];

    // The live member subscribes to `subscribed`: its offsets stay (KIP-496).
    assert_eq!(
        delete_offsets(&bootstrap, &group, &[(&subscribed, 0), (&other, 0)]),
        Ok(vec![GROUP_SUBSCRIBED_TO_TOPIC, NO_ERROR])
    );
    assert_eq!(
        committed(&c, &all),
        vec![Offset::Offset(5), Offset::Offset(6), Offset::Invalid]
    );
    // Unknown groups and partitions get their own codes.
    assert_eq!(
        delete_offsets(&bootstrap, "no-such-group", &[(&other, 0)]),
        Err(RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND)
    );
    assert_eq!(
        delete_offsets(&bootstrap, &group, &[(&other, 9)]),
        Ok(vec![
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
        ])
    );

    // Once the group is empty every offset may go, and a restart does not bring them back.
    c.unsubscribe();
    drop(c);
    assert_eq!(
        delete_offsets(&bootstrap, &group, &[(&subscribed, 0)]),
        Ok(vec![NO_ERROR])
    );
    broker.kill();
    broker.restart();
    let probe: BaseConsumer = {
        let mut cfg = base_config(&bootstrap);
        cfg.set("group.id", &group)
            .set("enable.auto.commit", "false");
        cfg.create().unwrap()
    };
    assert_eq!(
        committed(&probe, &all),
        vec![Offset::Invalid, Offset::Offset(6), Offset::Invalid]
    );
}
