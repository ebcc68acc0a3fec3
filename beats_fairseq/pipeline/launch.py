"""Child processes of a run: ``fairseq-hydra-train`` launches, their logs and their progress lines.

:func:`run_logged` runs a command with its output appended to the stage's log; a
:class:`Children` set knows the running ones, so that a failure or Ctrl-C in one thread stops
the others (``terminate``, then ``kill`` after 30 s).
"""

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

PROGRESS_KEYS = ("num_updates", "loss", "accuracy", "cosine", "mAP", "code_usage")


class Children:
    """The running child processes of a run."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = set()
        self.stopping = threading.Event()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            running = list(self._running)
        for proc in running:
            if proc.poll() is None:
                proc.terminate()


def run_logged(cmd: List[str], log_path: Path, echo: Callable[[str], None], threads: Optional[int] = None,
               children: Optional[Children] = None) -> int:
    """Run ``cmd``, appending its output to ``log_path``; ``echo(line)`` sees every line.

    ``threads``: the child's ``OMP_NUM_THREADS`` (torch's intra-op threads).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1, start_new_session=True)
        if children:
            children.add(proc)
        try:
            for line in proc.stdout:
                log.write(line)
                echo(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            if children:
                children.discard(proc)


def fairseq_train_command(config_dir: Path, overrides: List[str] = ()) -> List[str]:
    """``fairseq-hydra-train --config-dir config_dir --config-name stage [overrides]``."""
    exe = Path(sys.executable).with_name("fairseq-hydra-train")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return head + ["--config-dir", str(config_dir), "--config-name", "stage", *overrides]


def progress_text(line: str) -> str:
    """``"train_inner: num_updates=10 loss=3.1 ..."`` for a fairseq json metrics line, else ``""``.

    fairseq logs ``[time][train_inner][INFO] - {json}`` (``common.log_format=json``, which the
    pipeline sets); validation keys are prefixed with their subset (``valid_loss``).
    """
    head, sep, body = line.partition("][INFO] - {")
    kind = head.rpartition("][")[2]
    if not sep or kind not in ("train_inner", "train", "valid"):
        return ""
    try:
        metrics = json.loads("{" + body)
    except json.JSONDecodeError:
        return ""
    prefix = "" if kind == "train_inner" else f"{kind}_"
    shown = [f"{k}={_short(metrics[prefix + k])}" for k in PROGRESS_KEYS if prefix + k in metrics]
    return f"{kind}: " + " ".join(shown) if shown else ""


def _short(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number == int(number) else f"{number:.4g}"
