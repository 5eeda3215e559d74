"""kafka-python (2.x) group consumer against `runnel serve`: subscribe with a
group_id (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, OffsetCommit/Fetch,
LeaveGroup), read everything, commit, and resume from the committed offsets.
"""
import time
import uuid

from kafka import KafkaConsumer, TopicPartition

from test_kafka_python import bounded_test  # noqa: F401 (autouse: bounds every test)
from test_kafka_python import PARTITIONS, TIMEOUT_S, check_records, common, create_topic, produce, record


def test_group_consumer_reads_everything_and_commits(broker):
    topic = f"kpy-{uuid.uuid4().hex[:8]}"
    group = f"kpy-group-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    sent = {p: [record(p, i) for i in range(10)] for p in range(PARTITIONS)}
    produce(broker.bootstrap, topic, [(p, *r) for p in range(PARTITIONS) for r in sent[p]])

    def consume(want_per_partition):
        consumer = KafkaConsumer(
            topic,
            **common(broker.bootstrap),
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        try:
            got = {p: [] for p in range(PARTITIONS)}
            deadline = time.monotonic() + TIMEOUT_S
            while any(len(got[p]) < want_per_partition[p] for p in range(PARTITIONS)):
                assert time.monotonic() < deadline, f"group consumer got {[len(got[p]) for p in got]} after {TIMEOUT_S}s"
                for tp, msgs in consumer.poll(timeout_ms=200).items():
                    got[tp.partition].extend(msgs)
            # Nothing beyond what was expected.
            extra = consumer.poll(timeout_ms=500)
            assert not any(extra.values()), f"unexpected records {extra}"
            consumer.commit(timeout_ms=TIMEOUT_S * 1000)
            committed = {p: consumer.committed(TopicPartition(topic, p), timeout_ms=TIMEOUT_S * 1000) for p in range(PARTITIONS)}
            return got, committed
        finally:
            consumer.close()

    got, committed = consume({p: 10 for p in range(PARTITIONS)})
    check_records(got, sent)
    assert committed == {p: 10 for p in range(PARTITIONS)}

    # A new member of the same group resumes at the committed offsets.
    late = {p: [(f"late-{p}".encode(), f"late value {p}".encode(), [], 1_800_000_000_000 + p)] for p in range(PARTITIONS)}
    produce(broker.bootstrap, topic, [(p, *late[p][0]) for p in range(PARTITIONS)])
    got, committed = consume({p: 1 for p in range(PARTITIONS)})
    for p in range(PARTITIONS):
        assert [(m.offset, m.key, m.value) for m in got[p]] == [(10, late[p][0][0], late[p][0][1])], f"partition {p}"
    assert committed == {p: 11 for p in range(PARTITIONS)}
