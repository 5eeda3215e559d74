"""pytest fixtures: start the real `runnel` binary on an ephemeral port.

The binary comes from $RUNNEL_BIN (default target/debug/runnel, relative to
the repository root). The broker is ready when it prints exactly
`runnel: ready on 127.0.0.1:PORT` on stdout; the wait is bounded.
"""
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, binary: Path, data_dir: str, log_path: str):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = _free_port()
        self.proc = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--listen", self.bootstrap, "--data-dir", self.data_dir, "--cores", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            # Parallel test brokers stay off the fixed admin HTTP port.
            env={**os.environ, "RUNNEL_ADMIN_LISTEN": "off", "RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"},
        )
        log.close()
        expected = f"runnel: ready on {self.bootstrap}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"broker not ready within {READY_TIMEOUT_S}s; stdout={buf!r}\n{self.log_tail()}")
            if not sel.select(timeout=left):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                code = self.proc.wait()
                raise AssertionError(f"broker exited ({code}) before ready; stdout={buf!r}\n{self.log_tail()}")
            buf += chunk
            if any(line.decode(errors="replace") == expected for line in buf.split(b"\n")[:-1]):
                break
        sel.close()
        # Keep draining stdout so the broker never blocks on a full pipe.
        import threading

        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in iter(lambda: out.read(4096), b"")], daemon=True).start()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def broker():
    binary = Path(os.environ.get("RUNNEL_BIN", REPO / "target" / "debug" / "runnel"))
    if not binary.is_absolute():
        binary = REPO / binary
    assert binary.exists(), f"runnel binary not found at {binary}; build it or set RUNNEL_BIN"
    with tempfile.TemporaryDirectory(prefix="runnel-py-") as tmp:
        b = Broker(binary, os.path.join(tmp, "data"), os.path.join(tmp, "stderr.log"))
        b.start()
        try:
            yield b
        finally:
            b.kill()
