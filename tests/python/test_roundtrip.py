"""confluent-kafka (librdkafka via Python) round trip against `runnel serve`.

Consumers use assign() (no group subscribe, no commits; groups are in
test_groups.py). Every wait is bounded; counts are exact.
"""
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 30


def common(bootstrap):
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "socket.timeout.ms": 10000}


def create_topic(bootstrap, name, partitions):
    admin = AdminClient(common(bootstrap))
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)], request_timeout=20)
    futures[name].result(timeout=TIMEOUT_S)


def produce(bootstrap, topic, records, **extra):
    """records: list of (partition, key, value, headers). Returns delivery (partition, offset) per record."""
    p = Producer({**common(bootstrap), "acks": "all", "message.timeout.ms": 15000, "linger.ms": 5, **extra})
    reports = [None] * len(records)

    def on_delivery(i):
        def cb(err, msg):
            reports[i] = (err, msg.partition(), msg.offset())

        return cb

    for i, (partition, key, value, headers) in enumerate(records):
        p.produce(topic, value=value, key=key, headers=headers, partition=partition, on_delivery=on_delivery(i))
    remaining = p.flush(TIMEOUT_S)
    assert remaining == 0, f"{remaining} records not delivered within {TIMEOUT_S}s"
    for i, r in enumerate(reports):
        assert r is not None, f"no delivery report for record {i}"
        assert r[0] is None, f"record {i} failed: {r[0]}"
    return [(r[1], r[2]) for r in reports]


def consume_to_end(bootstrap, topic, partitions):
    c = Consumer({
        **common(bootstrap),
        "group.id": "runnel-py-tests",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    })
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    pending = set(partitions)
    out = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while pending:
            assert time.monotonic() < deadline, f"partitions {pending} not at end after {TIMEOUT_S}s ({len(out)} msgs)"
            m = c.poll(0.1)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, f"consumer error: {m.error()}"
                pending.discard(m.partition())
                continue
            pending.add(m.partition())
            out.append(m)
    finally:
        c.close()
    return out


def test_keys_values_and_headers_round_trip(broker):
    topic = f"py-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    records = [
        (0, f"key-{i}".encode(), f"value-{i}".encode(), [("i", str(i).encode()), ("src", b"python")])
        for i in range(100)
    ]
    records.append((0, None, b"no key, no headers", None))
    records.append((0, b"binary", bytes(range(256)), [("bin", bytes(range(256))), ("null", None)]))
    records.append((0, b"tombstone", None, None))
    delivered = produce(broker.bootstrap, topic, records)
    assert sorted(o for _, o in delivered) == list(range(len(records)))

    msgs = consume_to_end(broker.bootstrap, topic, [0])
    assert len(msgs) == len(records)
    for i, (m, (_, key, value, headers)) in enumerate(zip(msgs, records)):
        assert m.offset() == i
        assert m.key() == key, f"key of record {i}"
        assert m.value() == value, f"value of record {i}"
        assert (m.headers() or []) == (headers or []), f"headers of record {i}"


def test_many_partitions_with_compression(broker):
    topic = f"py-{uuid.uuid4().hex[:8]}"
    partitions = 8
    create_topic(broker.bootstrap, topic, partitions)
    records = [(i % partitions, None, f"p{i % partitions}-{i // partitions}".encode() * 4, None) for i in range(800)]
    delivered = produce(broker.bootstrap, topic, records, **{"compression.type": "zstd"})
    for (part, _), (want, *_rest) in zip(delivered, records):
        assert part == want

    msgs = consume_to_end(broker.bootstrap, topic, list(range(partitions)))
    assert len(msgs) == len(records)
    by_part = {}
    for m in msgs:
        by_part.setdefault(m.partition(), []).append((m.offset(), m.value()))
    for p in range(partitions):
        want = [(i, f"p{p}-{i}".encode() * 4) for i in range(100)]
        assert by_part.get(p) == want, f"partition {p}"
