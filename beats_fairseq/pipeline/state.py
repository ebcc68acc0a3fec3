"""``RUN_DIR/state.json``: what a run has done, so that the same command resumes it.

``{"version": 1, "plan": [stage names], "runs": [{"command", "started"}], "stages": {name: entry}}``;
an entry has ``status`` (pending, running, done, failed, interrupted), ``seconds`` (summed over
launches), ``finished``, ``metrics`` and, for training stages, the composed ``config`` (yaml) and
its ``recipe``; a probe or tokenizers stage records what it ``covered`` (``steps.covered``). Written atomically after every change;
one lock for the threads that run stages in parallel.
"""

import json
import os
import threading
import time
from pathlib import Path

STATE_VERSION = 1


class State:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data = {"version": STATE_VERSION, "stages": {}}
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                self.data = json.load(f)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "pending", "seconds": 0.0})

    def started(self, command: str, plan) -> None:
        self.data.setdefault("runs", []).append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.data["plan"] = list(plan)
        self.save()

    def update(self, name: str, **values) -> dict:
        """Set ``values`` in the stage's entry and save."""
        with self.lock:
            entry = self.stage(name)
            entry.update(values)
            self.save()
            return entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
