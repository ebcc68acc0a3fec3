"""Training runs as real processes that a test reads while they run, pauses, signals and kills.

A :class:`Run` starts a command in its own session, so that a signal sent with :meth:`Run.signal`
reaches the run and its DataLoader workers together, as SLURM and torchrun send it. Launched with
``common.user_dir=PAUSE_USER_DIR`` and ``BEATS_TEST_PAUSE=WHERE:UPDATE`` in its environment, a run
stops at that point and prints ``PAUSED WHERE UPDATE`` until :meth:`Run.release` (see
``tests/beats_pause``).
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

PAUSE_USER_DIR = Path(__file__).resolve().parent / "beats_pause"


class Run:
    def __init__(self, cmd, env=None, name="run"):
        self.name = name
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {})), start_new_session=True)
        self.lines = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of output
            self.changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(line for line in self.lines if line is not None)

    def wait_for(self, pattern: str, timeout: float = 600) -> str:
        """The first output line matching the regular expression ``pattern`` (fails if the run ends first)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.changed:
            while True:
                for line in self.lines[seen:]:
                    if line is None:
                        self.kill()
                        pytest.fail(f"{self.name} ended before printing /{pattern}/:\n{self.log[-8000:]}")
                    if re.search(pattern, line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    pytest.fail(f"{self.name} printed no /{pattern}/ in {timeout} s:\n{self.log[-8000:]}")
                self.changed.wait(timeout=remaining)

    def signal(self, signum) -> None:
        """``signum`` to the run and its DataLoader workers (its process group)."""
        os.killpg(self.proc.pid, signum)

    def release(self) -> None:
        """Let a paused run go on."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 900) -> int:
        """Its exit status, once its output is read to the end."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not end in {timeout} s:\n{self.log[-8000:]}")
        self.reader.join()
        return self.proc.returncode

    def expect_exit(self, status: int, timeout: float = 900) -> str:
        """Wait for the end; fail with the log unless it exits with ``status``; the log."""
        got = self.wait(timeout)
        if got != status:
            pytest.fail(f"{self.name} exited with {got}, not {status}:\n{self.log[-8000:]}")
        return self.log
