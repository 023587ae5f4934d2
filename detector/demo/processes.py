"""The demo's child processes, each started and stopped by its PID.

A child gets a session of its own, so a Ctrl-C in the terminal reaches only the
demo, which then stops its children in order; and it is tied to the demo's life
(``PR_SET_PDEATHSIG``), so that even a demo killed with SIGKILL takes its
children with it. Start children from the main thread: the death signal fires
when the thread that forked the child exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detector.errors import DetectorError

_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 3000


class ChildError(DetectorError):
    """A child process could not be started, or died while the demo needed it."""


def _tie_to_parent(death_signal: int) -> Callable[[], None]:
    def setup() -> None:
        # The demo blocks SIGINT/SIGTERM while it cleans up; a child must not inherit that.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return setup


@dataclass
class Child:
    """One child process, with its output in ``log_path``."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    death_signal: int = signal.SIGTERM
    """What the child gets if the demo dies without stopping it."""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        """Launch the child; returns at once (wait for readiness separately)."""
        if self.proc is not None:
            raise ChildError(f"{self.name} already started (pid {self.proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_tie_to_parent(self.death_signal),
                )
        except OSError as exc:
            raise ChildError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        return self

    @property
    def pid(self) -> int:
        """The child's PID."""
        if self.proc is None:
            raise ChildError(f"{self.name} is not started")
        return self.proc.pid

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0, hurry: Callable[[], bool] = lambda: False) -> int | None:
        """SIGTERM; SIGKILL after ``timeout`` seconds (or as soon as ``hurry()``); reap.

        Returns the exit status (``None`` if it was never started). Safe to call twice.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.05)
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGKILL)
        return proc.wait()

    def tail(self, max_bytes: int = _TAIL_BYTES) -> str:
        """The end of the child's output."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(max(0, self.log_path.stat().st_size - max_bytes))
            return fh.read().decode("utf-8", "replace")

    def check(self) -> None:
        """Raise :class:`ChildError`, with the end of its output, if the child has died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ChildError(
                f"{self.name} (pid {self.proc.pid}) exited with status {self.proc.returncode}; "
                f"last output:\n{self.tail()}"
            )


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def worker_argv() -> list[str]:
    """``detector worker`` run by this interpreter."""
    return [sys.executable, "-m", "detector", "worker"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without ``DETECTOR_*`` variables, plus ``extra``: the
    worker is configured only by the demo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(extra)
    return env
