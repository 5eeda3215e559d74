'use strict'
// kafkajs 2.2.4: producing to a topic that does not exist, with
// allowAutoTopicCreation false, must fail with UNKNOWN_TOPIC_OR_PARTITION and
// must not create the topic (the broker's auto.create.topics.enable is on).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startBroker, withTimeout } = require('./broker')
const { kafkaFor, errorChain, describeError } = require('./common')

const T = 30000
let broker

before(async () => { broker = await startBroker() }, { timeout: 60000 })
after(async () => { if (broker) await broker.stop() }, { timeout: 60000 })

test('produce to an unknown topic with allowAutoTopicCreation false fails with UNKNOWN_TOPIC_OR_PARTITION', { timeout: 90000 }, async () => {
  const kafka = kafkaFor(broker, 'runnel-node-unknown', { retries: 1, initialRetryTime: 100, maxRetryTime: 300 })
  const topic = `js-missing-${process.pid}-${Date.now()}`
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await withTimeout(producer.connect(), T, 'producer.connect')
  let err = null
  try {
    await withTimeout(producer.send({ topic, acks: -1, messages: [{ value: 'x' }] }), 60000, 'producer.send')
  } catch (e) {
    err = e
  } finally {
    await withTimeout(producer.disconnect(), T, 'producer.disconnect')
  }
  assert.ok(err, 'producing to an unknown topic should fail')
  assert.ok(!/^timed out/.test(err.message), `send hung: ${err.message}`)
  const chain = errorChain(err)
  assert.ok(chain.some(e => e.type === 'UNKNOWN_TOPIC_OR_PARTITION'),
    `expected UNKNOWN_TOPIC_OR_PARTITION, got ${describeError(err)}`)

  const admin = kafka.admin()
  await withTimeout(admin.connect(), T, 'admin.connect')
  try {
    const topics = await withTimeout(admin.listTopics(), T, 'listTopics')
    assert.ok(!topics.includes(topic), `${topic} was auto-created: ${JSON.stringify(topics)}`)
  } finally {
    await withTimeout(admin.disconnect(), T, 'admin.disconnect')
  }
})
