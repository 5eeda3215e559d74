'use strict'
// kafkajs 2.2.4 group consumer against `runnel serve`. kafkajs has no assign():
// reading back needs consumer groups (FindCoordinator, JoinGroup, SyncGroup,
// Heartbeat, OffsetCommit/OffsetFetch, LeaveGroup). Records are produced with
// acks -1, keys, headers and gzip, read back exactly, committed, and a second
// member of the group resumes at the committed offsets.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { CompressionTypes } = require('kafkajs')
const { startBroker, withTimeout } = require('./broker')
const { kafkaFor, record, headersOf, expectedHeaders } = require('./common')

const T = 30000
const PARTITIONS = 3
const PER_PARTITION = 30
let broker
let kafka
let admin
const topic = `js-group-topic-${process.pid}-${Date.now()}`
const sent = [[], [], []]

before(async () => {
  broker = await startBroker()
  kafka = kafkaFor(broker, 'runnel-node-group')
  admin = kafka.admin()
  await withTimeout(admin.connect(), T, 'admin.connect')
  const created = await withTimeout(
    admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS }], waitForLeaders: true, timeout: 10000 }),
    T, 'createTopics')
  assert.equal(created, true)
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await withTimeout(producer.connect(), T, 'producer.connect')
  try {
    const messages = []
    for (let p = 0; p < PARTITIONS; p++) {
      for (let i = 0; i < PER_PARTITION; i++) {
        messages.push(record(p, i))
        sent[p].push(record(p, i))
      }
    }
    const res = await withTimeout(producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages }), T, 'producer.send')
    assert.deepEqual(res.map(r => r.errorCode), [0, 0, 0])
  } finally {
    await withTimeout(producer.disconnect(), T, 'producer.disconnect')
  }
}, { timeout: 90000 })

after(async () => {
  if (admin) await withTimeout(admin.disconnect(), T, 'admin.disconnect').catch(() => {})
  if (broker) await broker.stop()
}, { timeout: 60000 })

// Subscribe with a group, read until every partition's count is reached, check each record.
async function consumeGroup (groupId, want, { commit }) {
  const consumer = kafka.consumer({
    groupId,
    sessionTimeout: 10000,
    rebalanceTimeout: 10000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 200,
    retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 }
  })
  const got = [[], [], []]
  let crashed = null
  consumer.on(consumer.events.CRASH, e => { crashed = e.payload.error })
  await withTimeout(consumer.connect(), T, 'consumer.connect')
  try {
    await withTimeout(consumer.subscribe({ topics: [topic], fromBeginning: true }), T, 'consumer.subscribe')
    let total = 0
    const wantTotal = want.reduce((a, b) => a + b, 0)
    let onDone
    const done = new Promise(resolve => { onDone = resolve })
    if (wantTotal === 0) onDone()
    await withTimeout(consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic: t, partition, message }) => {
        assert.equal(t, topic)
        got[partition].push(message)
        total++
        if (total >= wantTotal) onDone()
      }
    }), T, 'consumer.run')
    const deadline = Date.now() + 45000
    await withTimeout(Promise.race([done, new Promise((resolve, reject) => {
      const iv = setInterval(() => {
        if (crashed) { clearInterval(iv); reject(crashed) }
        if (Date.now() > deadline) clearInterval(iv)
      }, 50)
      done.then(() => clearInterval(iv))
    })]), 45000, `consumer ${groupId}: ${total}/${wantTotal} records (per partition ${got.map(g => g.length)})`)
    // A short grace period: nothing beyond what was expected may arrive.
    await new Promise(resolve => setTimeout(resolve, 500))
    if (commit) {
      const offsets = got.map((msgs, partition) => ({ partition, msgs }))
        .filter(x => x.msgs.length > 0)
        .map(({ partition, msgs }) => ({ topic, partition, offset: String(BigInt(msgs[msgs.length - 1].offset) + 1n) }))
      await withTimeout(consumer.commitOffsets(offsets), T, 'consumer.commitOffsets')
    }
  } finally {
    await withTimeout(consumer.disconnect(), T, 'consumer.disconnect')
  }
  return got
}

test('group consumer reads everything back; committed offsets resume a second member', { timeout: 180000 }, async () => {
  const groupId = `js-group-${process.pid}-${Date.now()}`
  const got = await consumeGroup(groupId, sent.map(s => s.length), { commit: true })
  for (let p = 0; p < PARTITIONS; p++) {
    assert.equal(got[p].length, sent[p].length, `partition ${p}: got ${got[p].length} records`)
    got[p].forEach((m, i) => {
      const r = sent[p][i]
      assert.equal(m.offset, String(i), `partition ${p} record ${i} offset`)
      assert.equal(m.key === null ? null : m.key.toString(), r.key, `partition ${p} record ${i} key`)
      if (r.value === null) assert.equal(m.value, null, `partition ${p} record ${i} should be a tombstone`)
      else assert.equal(Buffer.compare(m.value, Buffer.from(r.value)), 0, `partition ${p} record ${i} value`)
      assert.deepEqual(headersOf(m), expectedHeaders(r), `partition ${p} record ${i} headers`)
      if (r.timestamp !== null) assert.equal(m.timestamp, r.timestamp, `partition ${p} record ${i} timestamp`)
    })
  }

  const committed = await withTimeout(admin.fetchOffsets({ groupId, topics: [topic] }), T, 'admin.fetchOffsets')
  assert.equal(committed.length, 1)
  assert.deepEqual(
    committed[0].partitions.slice().sort((a, b) => a.partition - b.partition).map(p => [p.partition, p.offset]),
    [0, 1, 2].map(p => [p, String(sent[p].length)]))

  // New records; a new member of the same group starts at the committed offsets.
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await withTimeout(producer.connect(), T, 'producer.connect')
  try {
    const res = await withTimeout(producer.send({
      topic, acks: -1, messages: [0, 1, 2].map(p => ({ partition: p, key: `late-${p}`, value: `late value ${p}` }))
    }), T, 'producer.send late')
    assert.equal(res.length, 3)
  } finally {
    await withTimeout(producer.disconnect(), T, 'producer.disconnect')
  }
  const again = await consumeGroup(groupId, [1, 1, 1], { commit: false })
  for (let p = 0; p < PARTITIONS; p++) {
    assert.deepEqual(again[p].map(m => [m.offset, m.key.toString(), m.value.toString()]),
      [[String(sent[p].length), `late-${p}`, `late value ${p}`]], `partition ${p} after resume`)
  }

  const groups = await withTimeout(admin.listGroups(), T, 'admin.listGroups')
  assert.ok(groups.groups.some(g => g.groupId === groupId), `listGroups ${JSON.stringify(groups)} lacks ${groupId}`)
})

test('two members split the partitions; a leaving member hands its partitions back', { timeout: 180000 }, async () => {
  const groupId = `js-split-${process.pid}-${Date.now()}`
  const members = {}
  const make = name => {
    const consumer = kafka.consumer({
      groupId,
      sessionTimeout: 10000,
      rebalanceTimeout: 10000,
      heartbeatInterval: 500,
      maxWaitTimeInMs: 200,
      retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 }
    })
    const m = { consumer, joins: [], got: [], crashed: null }
    consumer.on(consumer.events.GROUP_JOIN, e => m.joins.push((e.payload.memberAssignment[topic] || []).slice().sort()))
    consumer.on(consumer.events.CRASH, e => { m.crashed = e.payload.error })
    members[name] = m
    return m
  }
  const start = async m => {
    await withTimeout(m.consumer.connect(), T, 'consumer.connect')
    // fromBeginning: an owner reads its partitions from 0 (no commits here), so the
    // markers below are reached however late it resolves its start offsets.
    await withTimeout(m.consumer.subscribe({ topics: [topic], fromBeginning: true }), T, 'consumer.subscribe')
    await withTimeout(m.consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => { m.got.push([partition, message.key && message.key.toString()]) }
    }), T, 'consumer.run')
  }
  const waitFor = async (what, cond, ms = 45000) => {
    const deadline = Date.now() + ms
    while (!cond()) {
      for (const [name, m] of Object.entries(members)) if (m.crashed) throw new Error(`${name} crashed: ${m.crashed.message}`)
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${ms}ms waiting for ${what}; joins ${JSON.stringify(Object.fromEntries(Object.entries(members).map(([n, m]) => [n, m.joins])))}`)
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  const last = m => m.joins[m.joins.length - 1] || []
  const a = make('a')
  const b = make('b')
  try {
    await start(a)
    await waitFor('a to own every partition', () => last(a).length === PARTITIONS)
    const aJoinsBefore = a.joins.length
    await start(b)
    await waitFor('a to rejoin and the two assignments to split the partitions', () =>
      b.joins.length > 0 && a.joins.length > aJoinsBefore &&
      last(a).length > 0 && last(b).length > 0 &&
      [...last(a), ...last(b)].sort().join() === '0,1,2')

    // Fresh records: each must reach the member that owns its partition, once.
    const producer = kafka.producer({ allowAutoTopicCreation: false })
    await withTimeout(producer.connect(), T, 'producer.connect')
    try {
      await withTimeout(producer.send({
        topic, acks: -1, messages: [0, 1, 2].map(p => ({ partition: p, key: `split-${p}`, value: 'x' }))
      }), T, 'producer.send markers')
    } finally {
      await withTimeout(producer.disconnect(), T, 'producer.disconnect')
    }
    const markers = m => m.got.filter(([, k]) => k && k.startsWith('split-'))
    await waitFor('every marker to be consumed', () => markers(a).length + markers(b).length >= PARTITIONS)
    await new Promise(resolve => setTimeout(resolve, 500))
    assert.deepEqual(markers(a).map(([p]) => p).sort(), last(a), `a owns ${last(a)} and consumed ${JSON.stringify(markers(a))}`)
    assert.deepEqual(markers(b).map(([p]) => p).sort(), last(b), `b owns ${last(b)} and consumed ${JSON.stringify(markers(b))}`)

    // b leaves (LeaveGroup): a gets everything back.
    const aJoinsBeforeLeave = a.joins.length
    await withTimeout(b.consumer.disconnect(), T, 'b.disconnect')
    await waitFor('a to own every partition again', () => a.joins.length > aJoinsBeforeLeave && last(a).length === PARTITIONS,
      20000)
  } finally {
    await withTimeout(a.consumer.disconnect(), T, 'a.disconnect').catch(() => {})
    await withTimeout(b.consumer.disconnect(), T, 'b.disconnect').catch(() => {})
  }
})
