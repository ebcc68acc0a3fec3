"""A graceful stop on SIGUSR1 or SIGTERM: finish the update, save it, exit 75.

Schedulers warn a job before they kill it: SLURM sends the signal of ``#SBATCH
--signal=USR1@120`` (or SIGTERM on preemption), Kubernetes and most other schedulers SIGTERM.
Once a training run is under way (:func:`install`, called when fairseq starts loading the
checkpoint) these two signals no longer kill it:

* the handler only notes the signal; every rank finishes the update it is in (with the
  validation and the checkpoint that update has anyway);
* after every update the ranks agree on a stop (:func:`agreed_signal`: one scalar all-reduce,
  the largest signal number any rank received), so a signal that reached only some ranks, or
  reached them at different updates, stops all of them after the same update, and no rank
  waits in a collective for one that left;
* :func:`stop`: rank 0 writes ``checkpoint_last.pt`` at that update (crash-safe, as every
  checkpoint; nothing is written again when the update had its own checkpoint), the ranks wait
  for it, rank 0 logs one line saying where to resume, and every rank exits with status
  :data:`EXIT_STOPPED` (75, ``EX_TEMPFAIL``: try again later). The same command resumes
  exactly there;
* processes forked by a training process (DataLoader workers) block both signals: a signal
  sent to the whole process group (SLURM, torchrun) reaches the workers too, which would
  otherwise die and take the run with them; they end when their parent stops them.

fairseq's training loop is not changed beyond that: ``beats_fairseq/fairseq_patches.py``
installs :func:`stop_after_update_on_signal` around ``validate_and_save`` (called on every rank
after every update) and :func:`note_checkpoint_saves` around ``save_checkpoint``.
"""

import functools
import logging
import os
import signal
import threading
from typing import Optional

import torch.distributed as dist

from .distributed import max_over_ranks, world_size

logger = logging.getLogger(__name__)

#: Exit status of a run stopped by a signal after saving its update (sysexits' EX_TEMPFAIL).
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class TrainingStopped(SystemExit):
    """The run stopped on a signal after saving (exit status :data:`EXIT_STOPPED`, no traceback)."""

    def __init__(self):
        super().__init__(EXIT_STOPPED)


class StopRequest:
    """What this process knows: the stop signal it received, the update of the last checkpoint save."""

    def __init__(self):
        self.installed = False
        self.signal: Optional[int] = None
        self.saved_at: Optional[int] = None

    def handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = int(signum)


REQUEST = StopRequest()
_fork_hook_registered = False


def _block_stop_signals_in_child() -> None:
    if REQUEST.installed:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def install() -> None:
    """Turn SIGUSR1/SIGTERM into a request to stop after the current update (idempotent; needs the
    main thread, as every signal handler in Python)."""
    global _fork_hook_registered
    if REQUEST.installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, REQUEST.handle)
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_block_stop_signals_in_child)
        _fork_hook_registered = True
    REQUEST.installed = True


def agreed_signal() -> Optional[int]:
    """The stop signal received by any rank (the same answer on every rank), or None."""
    received = max_over_ranks(REQUEST.signal or 0)
    return received or None


def stop(cfg, trainer, epoch_itr, signum: int) -> None:
    """Called on every rank once they agreed to stop after this update: save it unless it is saved,
    wait for rank 0's write, log where to resume, exit :data:`EXIT_STOPPED`."""
    from fairseq import checkpoint_utils

    updates = trainer.get_num_updates()
    if REQUEST.saved_at != updates:
        checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, None)
    if world_size() > 1:
        dist.barrier()
    if trainer.should_save_checkpoint_on_current_rank:
        name = signal.Signals(signum).name
        if cfg.checkpoint.no_save:
            where = "checkpoint.no_save is set: nothing was saved, the same command starts over"
        else:
            last = os.path.abspath(os.path.join(cfg.checkpoint.save_dir,
                                                f"checkpoint_last{trainer.checkpoint_suffix}.pt"))
            where = f"{last} holds it: run the same command to resume"
        logger.warning("stopped by %s after update %d (epoch %d); %s (exit status %d)",
                       name, updates, epoch_itr.epoch, where, EXIT_STOPPED)
    raise TrainingStopped()


def stop_after_update_on_signal(original):
    """fairseq's ``validate_and_save`` (``original``), then a stop if any rank received a stop signal."""

    def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        valid_losses, should_stop = original(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
        if should_stop or not REQUEST.installed:
            return valid_losses, should_stop
        signum = agreed_signal()
        if signum is not None:
            stop(cfg, trainer, epoch_itr, signum)
        return valid_losses, should_stop

    return validate_and_save


def note_checkpoint_saves(original):
    """fairseq's ``save_checkpoint`` (``original``), noting the update it saved (on every rank)."""

    @functools.wraps(original)  # keeps fairseq's ``save_checkpoint.best`` where fairseq looks for it
    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        out = original(cfg, trainer, epoch_itr, val_loss)
        REQUEST.saved_at = trainer.get_num_updates()
        return out

    return save_checkpoint
