"""Topic configuration through confluent-kafka's AdminClient: IncrementalAlterConfigs
(SET and DELETE), AlterConfigs, and Kafka's INVALID_CONFIG for bad values."""

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

TIMEOUT_S = 20


def describe(admin, topic):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    (f,) = admin.describe_configs([res], request_timeout=TIMEOUT_S).values()
    return {k: v.value for k, v in f.result(timeout=TIMEOUT_S).items()}


def test_incremental_alter_sets_and_deletes_and_refuses_bad_values(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = "admin-cfg"
    for f in admin.create_topics([NewTopic(topic, 1)], request_timeout=TIMEOUT_S).values():
        f.result(timeout=TIMEOUT_S)
    assert describe(admin, topic)["retention.ms"] == "604800000"

    setting = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    for f in admin.incremental_alter_configs([setting]).values():
        f.result(timeout=TIMEOUT_S)
    cfg = describe(admin, topic)
    assert cfg["retention.ms"] == "60000"
    assert cfg["cleanup.policy"] == "compact"

    deleting = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    for f in admin.incremental_alter_configs([deleting]).values():
        f.result(timeout=TIMEOUT_S)
    cfg = describe(admin, topic)
    assert cfg["retention.ms"] == "604800000", "deleted config falls back to the default"
    assert cfg["cleanup.policy"] == "compact", "other configs untouched"

    bad = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)],
    )
    (f,) = admin.incremental_alter_configs([bad]).values()
    try:
        f.result(timeout=TIMEOUT_S)
        raise AssertionError("a non-integer retention.ms was accepted")
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.INVALID_CONFIG, e
    assert describe(admin, topic)["retention.ms"] == "604800000"

    unknown = ConfigResource(ConfigResource.Type.TOPIC, "no-such-topic", set_config={"retention.ms": "1"})
    (f,) = admin.alter_configs([unknown]).values()
    try:
        f.result(timeout=TIMEOUT_S)
        raise AssertionError("altering an unknown topic succeeded")
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, e
