"""kafka-python (pure-Python client, 2.x) against `runnel serve`.

kafka-python guesses the broker version from the ApiVersions ranges; these tests
never pass api_version, so that guess is exercised. Every wait is bounded;
counts are exact. A missing kafka-python fails the import (it is not skipped).
"""
import signal
import time
import uuid

import kafka
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.client_async import KafkaClient

TIMEOUT_S = 30
PARTITIONS = 3
PER_PARTITION = 60
TEST_DEADLINE_S = 120


@pytest.fixture(autouse=True)
def bounded_test():
    """Bounds every test even where a kafka-python call has no timeout of its own."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_DEADLINE_S}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def common(bootstrap):
    return {"bootstrap_servers": bootstrap, "request_timeout_ms": 15000, "api_version_auto_timeout_ms": 10000}


def create_topic(bootstrap, name, partitions):
    admin = KafkaAdminClient(**common(bootstrap))
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)], timeout_ms=15000)
        assert name in admin.list_topics()
    finally:
        admin.close()


def record(p, i):
    """(key, value, headers, timestamp_ms) of record i in partition p."""
    ts = 1_700_000_000_000 + p * 1000 + i
    if i == 7:
        return (f"tomb-{p}".encode(), None, [], ts)
    if i == 8:
        return (None, f"no key {p}".encode(), [], ts)
    value = bytes(range(256)) if i == 9 else f"value-{p}-{i}-".encode() * (1 + i % 5)
    headers = [("i", str(i).encode()), ("src", b"kafka-python"), ("dup", b"a"), ("dup", b"b"), ("bin", bytes([0, 255, p]))]
    return (f"key-{p}-{i}".encode(), value, headers, ts)


def produce(bootstrap, topic, records, **extra):
    """records: list of (partition, key, value, headers, ts). Returns (partition, offset) per record."""
    producer = KafkaProducer(
        **common(bootstrap), acks="all", compression_type="gzip", linger_ms=5, max_block_ms=20000, **extra
    )
    try:
        futures = [
            producer.send(topic, key=k, value=v, headers=h, partition=p, timestamp_ms=ts) for p, k, v, h, ts in records
        ]
        producer.flush(timeout=TIMEOUT_S)
        metas = [f.get(timeout=TIMEOUT_S) for f in futures]
        return [(m.partition, m.offset) for m in metas], producer.config["api_version"]
    finally:
        producer.close(timeout=10)


def read_to_end(bootstrap, topic, partitions):
    """assign() + seek_to_beginning(), read until every partition's end offset; returns records per partition."""
    consumer = KafkaConsumer(**common(bootstrap), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(tps)
        got = {p: [] for p in partitions}
        deadline = time.monotonic() + TIMEOUT_S
        def positions():
            return {tp: consumer.position(tp, timeout_ms=10000) for tp in tps}

        while any(pos is None or pos < end[tp] for tp, pos in positions().items()):
            assert time.monotonic() < deadline, f"not at end after {TIMEOUT_S}s: positions {positions()}, end {end}"
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                got[tp.partition].extend(msgs)
        return got, end
    finally:
        consumer.close()


def check_records(got, sent):
    for p, want in sent.items():
        assert len(got[p]) == len(want), f"partition {p}: {len(got[p])} records, want {len(want)}"
        for i, (m, (k, v, h, ts)) in enumerate(zip(got[p], want)):
            assert m.offset == i, f"partition {p} record {i} offset {m.offset}"
            assert m.key == k, f"partition {p} record {i} key"
            assert m.value == v, f"partition {p} record {i} value"
            assert list(m.headers) == h, f"partition {p} record {i} headers {m.headers!r}"
            assert m.timestamp == ts, f"partition {p} record {i} timestamp"


def test_version_detection_picks_a_modern_broker(broker):
    client = KafkaClient(**common(broker.bootstrap))
    try:
        detected = client.check_version(timeout=10)
    finally:
        client.close()
    # Produce v8 and Fetch v11 are advertised: kafka-python must not fall back to
    # an 0.x/1.x guess (old magic, no headers) and must not claim a version it
    # does not know.
    assert isinstance(detected, tuple) and all(isinstance(x, int) for x in detected), detected
    assert (2, 4) <= detected <= kafka_python_newest_known(), f"kafka-python {kafka.__version__} detected {detected}"

    producer = KafkaProducer(**common(broker.bootstrap), acks="all", max_block_ms=20000)
    try:
        assert producer.config["api_version"] == detected
        assert producer.max_usable_produce_magic(producer.config["api_version"]) == 2, "record batches (magic 2)"
    finally:
        producer.close(timeout=10)


def kafka_python_newest_known():
    from kafka.protocol.broker_api_versions import BROKER_API_VERSIONS

    return max(BROKER_API_VERSIONS)


def test_produce_gzip_keys_headers_and_read_back_with_assign(broker):
    topic = f"kpy-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    sent = {p: [record(p, i) for i in range(PER_PARTITION)] for p in range(PARTITIONS)}
    records = [(p, *sent[p][i]) for i in range(PER_PARTITION) for p in range(PARTITIONS)]
    delivered, api_version = produce(broker.bootstrap, topic, records)
    assert api_version >= (2, 4), f"producer detected {api_version}"
    for p in range(PARTITIONS):
        assert sorted(o for dp, o in delivered if dp == p) == list(range(PER_PARTITION)), f"offsets of partition {p}"

    got, end = read_to_end(broker.bootstrap, topic, range(PARTITIONS))
    assert {tp.partition: o for tp, o in end.items()} == {p: PER_PARTITION for p in range(PARTITIONS)}
    check_records(got, sent)


def test_idempotent_producer(broker):
    topic = f"kpy-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    sent = {0: [record(0, i) for i in range(20)]}
    delivered, _ = produce(broker.bootstrap, topic, [(0, *r) for r in sent[0]], enable_idempotence=True)
    assert [o for _, o in delivered] == list(range(20))
    got, _ = read_to_end(broker.bootstrap, topic, [0])
    check_records(got, sent)


def test_admin_metadata_asks_for_authorized_operations(broker):
    # kafka-python's admin sends Metadata v8 with include_*_authorized_operations and
    # decodes the bit fields: the -2^31 "not requested" default broke it
    # ("31 is not a valid ACLOperation").
    topic = f"kpy-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    admin = KafkaAdminClient(**common(broker.bootstrap))
    try:
        (described,) = admin.describe_topics([topic])
        assert described["error_code"] == 0
        assert [p["partition"] for p in described["partitions"]] == list(range(PARTITIONS))
        assert {"READ", "WRITE", "DESCRIBE"} <= set(described["authorized_operations"]), described
        cluster = admin.describe_cluster()
        assert [b["node_id"] for b in cluster["brokers"]] == [cluster["controller_id"]]
        assert "DESCRIBE" in cluster["authorized_operations"], cluster
    finally:
        admin.close()
