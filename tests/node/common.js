'use strict'
// Shared kafkajs settings: short, bounded timeouts and retries; quiet logs.
const { Kafka, logLevel } = require('kafkajs')

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'

function kafkaFor (broker, clientId, retry = {}) {
  return new Kafka({
    clientId,
    brokers: [broker.bootstrap],
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1000, ...retry },
    logLevel: logLevel.ERROR
  })
}

// The chain of errors kafkajs wraps (retries exceeded -> original error -> ...).
function errorChain (err) {
  const out = []
  const seen = new Set()
  const walk = e => {
    if (!e || typeof e !== 'object' || seen.has(e)) return
    seen.add(e)
    out.push(e)
    walk(e.originalError)
    walk(e.cause)
    if (Array.isArray(e.errors)) e.errors.forEach(walk)
  }
  walk(err)
  return out
}

function describeError (err) {
  return errorChain(err).map(e => `${e.name}(${e.type || ''}): ${e.message}`).join(' <- ')
}

const TS0 = 1700000000000

// Record i of partition p: tombstone, keyless, binary and multi-header cases included.
function record (p, i) {
  const n = p * 1000 + i
  if (i === 7) return { partition: p, key: `tomb-${p}`, value: null, timestamp: String(TS0 + n) }
  if (i === 8) return { partition: p, key: null, value: `no key ${p}`, timestamp: String(TS0 + n) }
  const value = i === 9 ? Buffer.from([...Array(256).keys()]) : `value-${p}-${i}-`.repeat(1 + (i % 5))
  return {
    partition: p,
    key: `key-${p}-${i}`,
    value,
    headers: { i: String(i), src: 'kafkajs', dup: ['a', 'b'], bin: Buffer.from([0, 255, p]) },
    timestamp: String(TS0 + n)
  }
}

function headersOf (m) {
  // kafkajs decodes header values as Buffers, repeated keys as arrays of Buffers.
  const out = {}
  for (const [k, v] of Object.entries(m.headers || {})) {
    out[k] = Array.isArray(v) ? v.map(b => Buffer.from(b).toString('hex')) : Buffer.from(v).toString('hex')
  }
  return out
}

function expectedHeaders (r) {
  if (!r.headers) return {}
  const hex = v => Buffer.from(v).toString('hex')
  const out = {}
  for (const [k, v] of Object.entries(r.headers)) out[k] = Array.isArray(v) ? v.map(hex) : hex(v)
  return out
}

module.exports = { kafkaFor, errorChain, describeError, record, headersOf, expectedHeaders }
