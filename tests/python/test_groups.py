"""confluent-kafka consumer groups: two members split a topic's partitions with no
overlap and no gap, the survivor takes all of them when one closes, and committed
offsets are where a new member resumes. Every wait is bounded."""
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 30
PARTITIONS = 6
RECORDS_PER_PARTITION = 10


def committed_for(partition):
    """The offset committed for a partition: inside the log, different per partition."""
    return 1 + partition


def common(bootstrap):
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "socket.timeout.ms": 10000}


def member(bootstrap, group, **extra):
    return Consumer(
        {
            **common(bootstrap),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            **extra,
        }
    )


def poll_until(consumers, what, cond, received=None):
    """Polls every consumer until cond(assignments) holds; collects messages."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for c in consumers:
            m = c.poll(0.05)
            if m is not None and not m.error() and received is not None:
                received.append((m.partition(), m.offset(), m.value()))
        sets = [{tp.partition for tp in c.assignment()} for c in consumers]
        if cond(sets):
            return sets
    raise AssertionError(f"{what}: not reached within {TIMEOUT_S}s; assignments {sets}")


def test_members_split_partitions_and_resume_at_committed_offsets(broker):
    topic, group = "py-groups", "py-group-1"
    admin = AdminClient(common(broker.bootstrap))
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)])[topic].result(timeout=TIMEOUT_S)
    p = Producer({**common(broker.bootstrap), "acks": "all"})
    for part in range(PARTITIONS):
        for i in range(RECORDS_PER_PARTITION):
            p.produce(topic, value=f"{part}-{i}".encode(), partition=part)
    assert p.flush(TIMEOUT_S) == 0

    a, b = member(broker.bootstrap, group), member(broker.bootstrap, group)
    a.subscribe([topic])
    b.subscribe([topic])
    everything = set(range(PARTITIONS))
    sets = poll_until([a, b], "two members own disjoint halves", lambda s: s[0] and s[1] and not (s[0] & s[1]) and (s[0] | s[1]) == everything)
    assert len(sets[0]) + len(sets[1]) == PARTITIONS

    # Commit a different offset for each partition a owns, then a leaves.
    owned_by_a = sets[0]
    a.commit(offsets=[TopicPartition(topic, q, committed_for(q)) for q in owned_by_a], asynchronous=False)
    a.close()
    poll_until([b], "survivor owns every partition", lambda s: s[0] == everything)
    b.close()

    # A new member resumes exactly at the committed offsets of a's partitions.
    c = member(broker.bootstrap, group)
    c.subscribe([topic])
    got = []
    poll_until([c], "new member owns everything", lambda s: s[0] == everything, received=got)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and {q for q, _, _ in got} < owned_by_a:
        m = c.poll(0.1)
        if m is not None and not m.error():
            got.append((m.partition(), m.offset(), m.value()))
    first = {}
    for q, off, _ in got:
        first.setdefault(q, off)
    for q in owned_by_a:
        assert first.get(q) == committed_for(q), f"partition {q} resumed at {first.get(q)}, committed {committed_for(q)}"
    committed = c.committed([TopicPartition(topic, q) for q in owned_by_a], timeout=TIMEOUT_S)
    assert {tp.partition: tp.offset for tp in committed} == {q: committed_for(q) for q in owned_by_a}
    c.close()
