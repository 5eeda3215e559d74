'use strict'
// kafkajs 2.2.4 producer against `runnel serve`: acks -1, keys, headers, gzip;
// base offsets and watermarks exact. (Reading back: group_consumer.test.js.)
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { CompressionTypes } = require('kafkajs')
const { startBroker, withTimeout } = require('./broker')
const { kafkaFor, record } = require('./common')

const T = 30000
const PARTITIONS = 3
const PER_PARTITION = 40
let broker
let kafka
let admin
const topic = `js-rt-${process.pid}-${Date.now()}`
// What was sent, per partition, in offset order: { key, value, headers, timestamp }.
const sent = [[], [], []]

before(async () => {
  broker = await startBroker()
  kafka = kafkaFor(broker, 'runnel-node-rt')
  admin = kafka.admin()
  await withTimeout(admin.connect(), T, 'admin.connect')
  const created = await withTimeout(
    admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS }], waitForLeaders: true, timeout: 10000 }),
    T, 'createTopics')
  assert.equal(created, true)
}, { timeout: 60000 })

after(async () => {
  if (admin) await withTimeout(admin.disconnect(), T, 'admin.disconnect').catch(() => {})
  if (broker) await broker.stop()
}, { timeout: 60000 })

test('producer: acks -1, keys, headers, gzip; offsets and watermarks exact', { timeout: 90000 }, async () => {
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await withTimeout(producer.connect(), T, 'producer.connect')
  try {
    // Two sends so the second batch's base offsets continue the first's.
    for (const [from, to] of [[0, PER_PARTITION / 2], [PER_PARTITION / 2, PER_PARTITION]]) {
      const messages = []
      for (let p = 0; p < PARTITIONS; p++) {
        for (let i = from; i < to; i++) messages.push(record(p, i))
      }
      const res = await withTimeout(
        producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages }),
        T, `producer.send [${from}, ${to})`)
      assert.deepEqual(
        res.map(r => [r.topicName, r.partition, r.errorCode, r.baseOffset]).sort((a, b) => a[1] - b[1]),
        [0, 1, 2].map(p => [topic, p, 0, String(from)]),
        `produce response ${JSON.stringify(res)}`)
      for (let p = 0; p < PARTITIONS; p++) {
        for (let i = from; i < to; i++) sent[p].push(record(p, i))
      }
    }
    // Keyed records without an explicit partition go where kafkajs' default
    // (murmur2) partitioner puts them; the broker must accept every partition.
    const keyed = await withTimeout(producer.send({
      topic,
      acks: -1,
      compression: CompressionTypes.GZIP,
      messages: [{ key: 'routing-key-a', value: 'routed' }]
    }), T, 'producer.send keyed')
    assert.equal(keyed.length, 1)
    assert.equal(keyed[0].errorCode, 0)
    assert.equal(keyed[0].baseOffset, String(PER_PARTITION))
    sent[keyed[0].partition].push({ key: 'routing-key-a', value: 'routed', headers: null, timestamp: null })
  } finally {
    await withTimeout(producer.disconnect(), T, 'producer.disconnect')
  }

  const offsets = await withTimeout(admin.fetchTopicOffsets(topic), T, 'fetchTopicOffsets')
  assert.deepEqual(
    offsets.slice().sort((a, b) => a.partition - b.partition).map(o => [o.partition, o.low, o.high]),
    [0, 1, 2].map(p => [p, '0', String(sent[p].length)]))
})
