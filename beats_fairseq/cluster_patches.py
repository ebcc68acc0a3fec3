"""fairseq patches for runs on a cluster: a graceful stop on SIGUSR1/SIGTERM, a lost rank named,
one run per ``checkpoint.save_dir``, a multi-process resume, bad validation files of fairseq's dry
run reported.

Each patch is a function named after what it does: it receives fairseq's original attribute and
returns its replacement; its docstring gives the fairseq version it was written for and why it is
needed. :data:`PATCHES` lists them with the attribute each replaces; the tasks call
:func:`apply_cluster_patches` when they are built (once per process). The code the replacements
run lives with its topic: ``preemption.py``, ``rank_watch.py``, ``run_lock.py``.
"""

import importlib
import logging
import sys
from typing import Callable, List, Tuple

from . import preemption, rank_watch, run_lock
from .distributed import any_rank, trusted_broadcast_object_slow

logger = logging.getLogger(__name__)

#: (module, attribute, make) in the order they are applied; ``make(original) -> replacement``.
PATCHES: List[Tuple[str, str, Callable]] = []
MARKER = "beats_cluster_patches"
DEFAULT_RANK_TIMEOUT = 60.0


def patches(module: str, attribute: str):
    """Register the decorated ``make(original) -> replacement`` as the patch of ``module.attribute``."""

    def register(make):
        PATCHES.append((module, attribute, make))
        return make

    return register


# --------------------------------------------------------------------------- the patches
@patches("fairseq.checkpoint_utils", "load_checkpoint")
def guard_the_training_run(original):
    """Written for ve-fairseq 0.12.3, whose training entry point (``fairseq_cli.train.main``) calls
    ``checkpoint_utils.load_checkpoint`` once, on every rank, when everything is built and before
    any checkpoint is read: the moment a training run starts, which fairseq offers no hook for.
    The replacement first turns SIGUSR1/SIGTERM into a graceful stop (``preemption.py``), takes
    ``checkpoint.save_dir``'s lock on the rank that writes checkpoints and stops every rank when
    another run holds it (``run_lock.py``), and starts the heartbeat that names a lost rank
    (``rank_watch.py``); then it loads the checkpoint as fairseq does."""

    def load_checkpoint(cfg, trainer, **passthrough_args):
        start_of_training(cfg, trainer)
        return original(cfg, trainer, **passthrough_args)

    return load_checkpoint


@patches("fairseq.checkpoint_utils", "save_checkpoint")
def note_checkpoint_saves(original):
    """Written for ve-fairseq 0.12.3. A graceful stop writes ``checkpoint_last.pt`` at the update it
    stops after, unless fairseq already saved that update (an interval or end-of-epoch checkpoint):
    the replacement notes the update of every save, on every rank, so that all ranks make the same
    choice (the save may hold collectives). It keeps fairseq's ``save_checkpoint.best``, which
    fairseq reads and writes as an attribute of the module's function."""
    return preemption.note_checkpoint_saves(original)


@patches("fairseq_cli.train", "validate_and_save")
def stop_after_update_on_signal(original):
    """Written for ve-fairseq 0.12.3, whose training loop calls ``validate_and_save`` on every rank
    after every update and ends the run only on ``max_update``, ``max_epoch``, a time or patience
    limit: a SIGTERM or SIGUSR1 (a scheduler's warning before a kill) killed the run and lost the
    updates since its last checkpoint. After fairseq's own validation and checkpoint of the update,
    the replacement asks every rank whether one received a stop signal (one all-reduce) and, if so,
    saves this update, waits for the write and exits with status 75 (``preemption.py``)."""
    return preemption.stop_after_update_on_signal(original)


@patches("fairseq_cli.train", "train")
def watch_ranks_while_training(original):
    """Written for ve-fairseq 0.12.3, whose ranks wait for a dead rank in their next collective
    (NCCL: until its timeout, then an error naming no rank) or fail with a socket error (gloo). The
    replacement of the one-epoch ``train`` lets the heartbeat judge the other ranks while an epoch
    runs and, on an error, waits for its verdict, which names the lost rank (``rank_watch.py``)."""
    return rank_watch.watch_while_training(original)


@patches("fairseq.distributed.utils", "_broadcast_object_slow")
def resume_on_several_ranks(original):
    """Written for ve-fairseq 0.12.3 with torch 2.6 or later. When a multi-process run resumes, rank
    0 reads ``checkpoint_last.pt`` and broadcasts the training state, pickled, to the other ranks,
    which unpickle it with ``torch.load``'s default, ``weights_only=True`` since torch 2.6: it
    refuses the OmegaConf config fairseq put into the state, and every rank but rank 0 stopped
    (``Unsupported global: omegaconf.dictconfig.DictConfig``), so no multi-process run could
    resume. The replacement's receiving ranks load those bytes, which rank 0 of the same run made,
    with ``weights_only=False`` (``distributed.py``)."""
    return trusted_broadcast_object_slow(original)


@patches("fairseq.data.iterators", "EpochBatchIterator.next_epoch_itr")
def report_bad_items_of_every_batch(original):
    """Written for ve-fairseq 0.12.3, which reads the whole validation set once before training (a
    "dry run" that only iterates over the batches). Bad files found by DataLoader workers are
    reported with their batch (``bad_items``, see ``data/audio_dataset.py``), and nobody looked at the
    dry run's batches: its bad files went unreported. The replacement hands the ``bad_items`` of
    every batch of a dataset of this project (one with ``remember_bad``) to the dataset in the main
    process as the batch leaves the iterator, so they are logged like any other bad file and known
    to the workers forked afterwards; other datasets keep fairseq's iterator."""

    def next_epoch_itr(self, *args, **kwargs):
        itr = original(self, *args, **kwargs)
        if not hasattr(self.dataset, "remember_bad"):
            return itr
        return BadItemsReported(itr, self.dataset)

    return next_epoch_itr


class BadItemsReported:
    """fairseq's epoch iterator ``itr`` (counting, skipping, ...), reporting each batch's ``bad_items``."""

    def __init__(self, itr, dataset):
        self._itr = itr
        self._dataset = dataset

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._itr)
        if isinstance(batch, dict) and batch.get("bad_items"):
            self._dataset.remember_bad(batch["bad_items"])
        return batch

    def __len__(self):
        return len(self._itr)

    def __getattr__(self, name):
        return getattr(self._itr, name)


# --------------------------------------------------------------------------- what they run
def start_of_training(cfg, trainer) -> None:
    """Stop signals, the folder's lock (every rank stops if another run holds it), the rank watch."""
    preemption.install()
    holder = run_lock.hold(cfg.save_dir) if trainer.should_save_checkpoint_on_current_rank else None
    if any_rank(holder is not None):
        if holder is not None:
            logger.error(run_lock.folder_held_message(cfg.save_dir, holder))
        raise run_lock.FolderHeldError()
    rank_watch.start(float(getattr(trainer.task.cfg, "rank_timeout", DEFAULT_RANK_TIMEOUT)))


def apply_cluster_patches() -> None:
    """Replace every attribute of :data:`PATCHES` in the installed fairseq, each once per process.

    The patches of ``fairseq_cli`` (the training entry point) are applied only where it is imported
    already, in a training process: importing ``fairseq_cli.train`` configures logging to stdout,
    which a process that only loads a checkpoint (``beats_fairseq.load``) must not get."""
    import fairseq

    applied = fairseq.__dict__.setdefault(MARKER, set())
    for module, attribute, make in PATCHES:
        if make.__name__ in applied or (module.startswith("fairseq_cli") and module not in sys.modules):
            continue
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, make(vars(owner)[name]))
        applied.add(make.__name__)
