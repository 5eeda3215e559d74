'use strict'
// kafkajs 2.2.4 admin client against `runnel serve`: CreateTopics, Metadata, ListOffsets.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startBroker, withTimeout } = require('./broker')
const { kafkaFor } = require('./common')

const T = 30000
let broker
let admin

before(async () => {
  broker = await startBroker()
  admin = kafkaFor(broker, 'runnel-node-admin').admin()
  await withTimeout(admin.connect(), T, 'admin.connect')
}, { timeout: 60000 })

after(async () => {
  if (admin) await withTimeout(admin.disconnect(), T, 'admin.disconnect').catch(() => {})
  if (broker) await broker.stop()
}, { timeout: 60000 })

test('createTopics (3 partitions), listTopics, fetchTopicMetadata, fetchTopicOffsets', { timeout: 90000 }, async () => {
  const topic = `js-admin-${process.pid}-${Date.now()}`
  const created = await withTimeout(
    admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }], waitForLeaders: true, timeout: 10000 }),
    T, 'createTopics')
  assert.equal(created, true, 'createTopics should report the topic as newly created')

  const again = await withTimeout(
    admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }], waitForLeaders: false, timeout: 10000 }),
    T, 'createTopics (again)')
  assert.equal(again, false, 'creating an existing topic should resolve to false (TOPIC_ALREADY_EXISTS)')

  const topics = await withTimeout(admin.listTopics(), T, 'listTopics')
  assert.ok(topics.includes(topic), `listTopics ${JSON.stringify(topics)} lacks ${topic}`)

  const md = await withTimeout(admin.fetchTopicMetadata({ topics: [topic] }), T, 'fetchTopicMetadata')
  assert.equal(md.topics.length, 1)
  assert.equal(md.topics[0].name, topic)
  const parts = md.topics[0].partitions.slice().sort((a, b) => a.partitionId - b.partitionId)
  assert.deepEqual(parts.map(p => p.partitionId), [0, 1, 2])
  for (const p of parts) {
    assert.equal(p.partitionErrorCode, 0, `partition ${p.partitionId} error`)
    assert.ok(p.leader >= 0, `partition ${p.partitionId} has leader ${p.leader}`)
    assert.deepEqual(p.replicas, [p.leader])
    assert.deepEqual(p.isr, [p.leader])
  }

  const offsets = await withTimeout(admin.fetchTopicOffsets(topic), T, 'fetchTopicOffsets')
  assert.deepEqual(
    offsets.slice().sort((a, b) => a.partition - b.partition),
    [0, 1, 2].map(partition => ({ partition, offset: '0', high: '0', low: '0' })))

  // Records move the high watermark of their partition only.
  const producer = kafkaFor(broker, 'runnel-node-admin-producer').producer({ allowAutoTopicCreation: false })
  await withTimeout(producer.connect(), T, 'producer.connect')
  try {
    const res = await withTimeout(producer.send({
      topic,
      acks: -1,
      messages: [0, 1, 2, 3, 4].map(i => ({ partition: 1, value: `v${i}` }))
    }), T, 'producer.send')
    assert.deepEqual(res.map(r => [r.topicName, r.partition, r.errorCode, r.baseOffset]), [[topic, 1, 0, '0']])
  } finally {
    await withTimeout(producer.disconnect(), T, 'producer.disconnect')
  }
  const after5 = await withTimeout(admin.fetchTopicOffsets(topic), T, 'fetchTopicOffsets after produce')
  assert.deepEqual(
    after5.slice().sort((a, b) => a.partition - b.partition),
    [
      { partition: 0, offset: '0', high: '0', low: '0' },
      { partition: 1, offset: '5', high: '5', low: '0' },
      { partition: 2, offset: '0', high: '0', low: '0' }
    ])

  // By timestamp: -1 (latest) semantics are covered above; an old timestamp finds the first record.
  const byTs = await withTimeout(admin.fetchTopicOffsetsByTimestamp(topic, 0), T, 'fetchTopicOffsetsByTimestamp')
  const p1 = byTs.find(o => o.partition === 1)
  assert.equal(p1 && p1.offset, '0', `fetchTopicOffsetsByTimestamp(0) = ${JSON.stringify(byTs)}`)
})
