'use strict'
// Starts the real `runnel` binary for a test file: free 127.0.0.1 port, temp data
// dir, bounded wait for the exact ready line on stdout, SIGKILL at the end.
// The binary comes from $RUNNEL_BIN (relative paths are taken from the repository
// root), default target/release/runnel. A missing binary fails the test.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const REPO = path.resolve(__dirname, '..', '..')
const READY_TIMEOUT_MS = 30000
const EXIT_TIMEOUT_MS = 10000

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function binaryPath () {
  const p = process.env.RUNNEL_BIN || path.join('target', 'release', 'runnel')
  return path.isAbsolute(p) ? p : path.join(REPO, p)
}

class Broker {
  constructor (proc, port, dir, logPath) {
    this.proc = proc
    this.port = port
    this.dir = dir
    this.logPath = logPath
    this.bootstrap = `127.0.0.1:${port}`
    this.exited = new Promise(resolve => {
      if (proc.exitCode !== null || proc.signalCode !== null) resolve()
      else proc.once('exit', () => resolve())
    })
  }

  logTail (n = 4000) {
    try {
      const buf = fs.readFileSync(this.logPath)
      return buf.subarray(Math.max(0, buf.length - n)).toString()
    } catch (_) {
      return ''
    }
  }

  async stop () {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL')
    let timer
    await Promise.race([
      this.exited,
      new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`broker pid ${this.proc.pid} did not exit within ${EXIT_TIMEOUT_MS}ms`)), EXIT_TIMEOUT_MS)
      })
    ]).finally(() => clearTimeout(timer))
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

async function startBroker ({ cores = 2, extraArgs = [] } = {}) {
  const bin = binaryPath()
  if (!fs.existsSync(bin)) {
    throw new Error(`runnel binary not found at ${bin}; build it (cargo build --release --bin runnel) or set RUNNEL_BIN`)
  }
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runnel-node-'))
  const logPath = path.join(dir, 'stderr.log')
  const logFd = fs.openSync(logPath, 'a')
  const bootstrap = `127.0.0.1:${port}`
  const proc = spawn(bin, [
    'serve', '--listen', bootstrap, '--data-dir', path.join(dir, 'data'),
    '--cores', String(cores), '--admin-listen', 'off', ...extraArgs
  ], {
    stdio: ['ignore', 'pipe', logFd],
    // Kafka's 3 s initial group rebalance delay would slow every group test.
    env: { RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS: '0', ...process.env }
  })
  fs.closeSync(logFd)
  // Never leave a broker behind, even if the test process dies before after().
  const killOnExit = () => { try { proc.kill('SIGKILL') } catch (_) {} }
  process.once('exit', killOnExit)
  proc.once('exit', () => process.removeListener('exit', killOnExit))
  const broker = new Broker(proc, port, dir, logPath)
  const expected = `runnel: ready on ${bootstrap}`

  let out = ''
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`broker not ready within ${READY_TIMEOUT_MS}ms; stdout=${JSON.stringify(out)}`))
      }, READY_TIMEOUT_MS)
      const done = (err) => {
        clearTimeout(timer)
        proc.stdout.removeListener('data', onData)
        proc.removeListener('exit', onExit)
        proc.removeListener('error', onError)
        err ? reject(err) : resolve()
      }
      const onData = chunk => {
        out += chunk.toString()
        if (out.split('\n').slice(0, -1).includes(expected)) done()
      }
      const onExit = (code, signal) => done(new Error(`broker exited (code ${code}, signal ${signal}) before ready; stdout=${JSON.stringify(out)}`))
      const onError = err => done(new Error(`cannot start ${bin}: ${err.message}`))
      proc.stdout.on('data', onData)
      proc.once('exit', onExit)
      proc.once('error', onError)
    })
  } catch (err) {
    await broker.stop().catch(() => {})
    err.message += `\n--- broker stderr ---\n${broker.logTail()}`
    throw err
  }
  // Keep draining stdout so the broker never blocks on a full pipe.
  proc.stdout.resume()
  return broker
}

// Resolves with the promise's value, or rejects after ms with a message naming what timed out.
function withTimeout (promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms: ${what}`)), ms)
    })
  ]).finally(() => clearTimeout(timer))
}

module.exports = { startBroker, withTimeout }
