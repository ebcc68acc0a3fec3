"""A rank that dies (killed, out of memory, its node lost) stops the others, naming it.

Without this, the other ranks of a multi-process run wait in their next collective: with NCCL
until its timeout (10 minutes by default) and then with an error that names no rank; with gloo
they fail at once with ``Connection closed by peer`` and an address. When training starts
(:func:`start`, called as fairseq loads the checkpoint, right after a collective of all ranks)
each rank runs a heartbeat thread over the rendezvous store of ``torch.distributed`` (a clone of
the default store, so the thread never waits behind the training's own use of it):

* every rank increments its counter ``beats_alive/RANK`` every ``timeout / 6`` seconds;
* rank 0 watches every counter; a counter that has not moved for ``timeout`` seconds
  (``task.rank_timeout``) means its rank is lost: rank 0 publishes the rank (``beats_lost``),
  logs one line naming it and exits with :data:`EXIT_LOST_RANK` (76);
* the other ranks watch rank 0's counter and ``beats_lost``: they log the line naming the lost
  rank and exit the same way. A store that stops answering means the process hosting it is
  gone (rank 0 when the store was started by rank 0: ``env://`` and ``tcp://`` without torchrun);
* the watch judges from the checkpoint load to the end of the first epoch and during every
  later epoch (:func:`watch_while_training`), not between epochs nor after the last one, when
  ranks leave at their own pace; a watcher that was itself held up for half the timeout (a
  suspended job, a starved machine) starts its clocks again rather than accuse the others.

So every surviving rank stops within ``timeout`` plus two heartbeat intervals (``4/3 x
task.rank_timeout``), whether it waits in a collective (NCCL) or its collective failed (gloo:
:meth:`RankWatch.explain`, called on the error, waits for the watch's verdict and lets the error
through only when there is none). The last checkpoint is untouched: the same command resumes
from it. A rank that is alive but stuck still beats; that case is left to the collective's own
timeout.
"""

import atexit
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Dict, Optional

logger = logging.getLogger(__name__)

#: Exit status of the surviving ranks when one rank is lost.
EXIT_LOST_RANK = 76
#: Seconds without a heartbeat after which a rank is lost (``task.rank_timeout``).
DEFAULT_TIMEOUT = 60.0
ALIVE = "beats_alive/{}"
LOST = "beats_lost"


class RankWatch:
    """The heartbeat and watch thread of one rank (see the module docstring)."""

    def __init__(self, store, rank: int, world: int, timeout: float):
        self.store = store
        self.rank = int(rank)
        self.world = int(world)
        self.timeout = float(timeout)
        self.interval = max(0.05, self.timeout / 6)
        self.watched = list(range(1, self.world)) if self.rank == 0 else [0]
        self.seen: Dict[int, tuple] = {}  # rank: (its counter, when it last moved)
        self.moves: Dict[int, int] = {r: 0 for r in self.watched}  # rank: how often its counter was seen moving
        self.active = threading.Event()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="beats-rank-watch", daemon=True)

    # ------------------------------------------------------------------ thread
    def start(self) -> "RankWatch":
        self.store.set_timeout(timedelta(seconds=self.timeout))
        self.store.add(ALIVE.format(self.rank), 1)
        self.watch()
        self.thread.start()
        return self

    def watch(self) -> None:
        """Judge the others from now on (clocks start again)."""
        now = time.monotonic()
        self.seen = {r: (self.seen.get(r, (None,))[0], now) for r in self.watched}
        self.active.set()

    def pause(self) -> None:
        """Keep beating, judge no one (between epochs and once training ended: ranks leave at their pace)."""
        self.active.clear()

    def close(self) -> None:
        """End the thread (at exit: a thread still in a store call when Python shuts down aborts it)."""
        self.closing.set()
        self.thread.join(timeout=2 * self.interval + 1)

    def _run(self) -> None:
        last_loop = time.monotonic()
        while not self.closing.wait(self.interval):
            now = time.monotonic()
            if now - last_loop > self.timeout / 2:  # this process was held up: no judgement on the others
                self.seen = {r: (count, now) for r, (count, _) in self.seen.items()}
            last_loop = now
            try:
                self.store.add(ALIVE.format(self.rank), 1)
                lost = self._check(now) if self.active.is_set() else None
            except Exception as e:  # the store is gone with the process that hosted it
                lost = (f"the rendezvous store of torch.distributed stopped answering ({type(e).__name__}: {e}): "
                        "the process that hosted it is gone (rank 0, unless torchrun hosts the store)")
            if lost is not None and self.active.is_set():
                self._exit(lost)
                return

    def _check(self, now: float) -> Optional[str]:
        """Why this rank must stop (a line naming the lost rank), or None."""
        if self.rank != 0 and self.store.check([LOST]):
            return f"rank 0 reports rank {int(self.store.get(LOST))} lost"
        for r in self.watched:
            count = int(self.store.add(ALIVE.format(r), 0))
            previous, since = self.seen[r]
            if count != previous:
                self.seen[r] = (count, now)
                self.moves[r] += 1
            elif now - since > self.timeout:
                if self.rank == 0:
                    self.store.set(LOST, str(r))
                return f"rank {r} sent no heartbeat for {now - since:.0f} s"
        return None

    def _exit(self, why: str) -> None:
        logger.error("%s (task.rank_timeout=%g): it was killed or its node failed; stopping rank %d with exit status "
                     "%d. Run the same command to resume from the last checkpoint_last.pt",
                     why, self.timeout, self.rank, EXIT_LOST_RANK)
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOST_RANK)

    # ------------------------------------------------------------------ main thread
    def explain(self) -> None:
        """Called with an error on the main thread: wait until the watch names a lost rank (it then
        exits the process) or, on rank 0, has seen every other rank's counter move twice since the
        error (a rank that died just before it may still be seen moving once: its last beats); then
        return. The other ranks cannot tell: they wait for rank 0's verdict as long as it may take."""
        before = dict(self.moves)
        deadline = time.monotonic() + self.timeout + 4 * self.interval  # the verdict comes within 2 intervals
        while time.monotonic() < deadline:
            if self.rank == 0 and all(self.moves[r] >= before[r] + 2 for r in self.watched):
                return
            time.sleep(self.interval / 4)


WATCH: Optional[RankWatch] = None


def start(timeout: float) -> Optional[RankWatch]:
    """Start this rank's heartbeat and watch (idempotent); nothing in a single process."""
    global WATCH
    import torch.distributed as dist

    if WATCH is not None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return WATCH
    store = dist.distributed_c10d._get_default_store().clone()
    WATCH = RankWatch(store, dist.get_rank(), dist.get_world_size(), timeout).start()
    atexit.register(WATCH.close)
    return WATCH


def watch_while_training(original):
    """fairseq's ``train`` (one epoch, ``original``), watched: an error waits for the watch's verdict;
    between epochs and after the last one nobody is judged."""

    def train(cfg, trainer, task, epoch_itr):
        if WATCH is None:
            return original(cfg, trainer, task, epoch_itr)
        WATCH.watch()
        try:
            return original(cfg, trainer, task, epoch_itr)
        except Exception:
            WATCH.explain()
            raise
        finally:
            WATCH.pause()

    return train
