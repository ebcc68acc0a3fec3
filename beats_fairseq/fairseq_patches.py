"""Every change this project makes to fairseq's own objects, in one place.

The tasks of this project call :func:`apply_fairseq_patches` when they are built; it replaces the
fairseq attributes listed below once per process (the marker ``fairseq.beats_fairseq_patches``
holds the ones in place; a second call changes nothing). The patches of fairseq's training entry
point (``fairseq_cli.train``) wait until a training process has imported it: importing it sends
the log to stdout, which a process that only loads a checkpoint must not get. Each patch is a
function named after what it fixes: it receives fairseq's original attribute and returns its
replacement, and its docstring gives the fairseq version it was written for and why it is
needed. The decorator :func:`patches` names the attribute it replaces; two patches of one
attribute apply in the order they are listed (the later one wraps the earlier). The code the
replacements run lives with its topic (``distributed.py``: CPU DDP, resuming on several ranks;
``safe_checkpoints.py``: crash-safe checkpoint files; ``preemption.py``, ``rank_watch.py``,
``run_lock.py``: a graceful stop on a signal, a lost rank named, one run per folder).

The patches were written for ve-fairseq 0.12.3 (:data:`WRITTEN_FOR`); importing this module with
another fairseq warns (:class:`FairseqVersionWarning`). After a fairseq upgrade run
``tests/test_fairseq_patches.py`` (every patched attribute must still exist before patching), then
read each reason below and check whether the new version still needs the patch.

Not patches (fairseq extended through its own registries, nothing of fairseq replaced):
``beats_composite`` (``optim.py``: fairseq's ``composite`` optimizer with weight-decay scales),
and the tasks' overrides of ``FairseqTask`` methods (``tasks/audio_task.py``).
"""

import importlib
import logging
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, List, Optional, Tuple

from . import preemption, rank_watch, run_lock
from .distributed import any_rank, cpu_aware_ddp, gloo_aware_all_gather_list, trusted_broadcast_object_slow
from .safe_checkpoints import atomic_copy_path_manager, checked_load_checkpoint, safe_torch_persistent_save

logger = logging.getLogger(__name__)

#: The fairseq distribution and version the patches were written (and are tested) for.
WRITTEN_FOR = ("ve-fairseq", "0.12.3")
#: Attribute of the ``fairseq`` package: the targets of the patches in place.
MARKER = "beats_fairseq_patches"
#: Distributions that install the ``fairseq`` package, in the order they are looked for.
FAIRSEQ_DISTRIBUTIONS = ("ve-fairseq", "fairseq")


class FairseqVersionWarning(UserWarning):
    """The installed fairseq is not the version the patches were written for."""


@dataclass(frozen=True)
class Patch:
    """``make(original) -> replacement`` for the attribute ``attribute`` (dotted) of module ``module``."""

    module: str
    attribute: str
    make: Callable

    @property
    def name(self) -> str:
        return self.make.__name__

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attribute}"

    def owner_and_name(self) -> Tuple[object, str]:
        """The object holding the attribute, and the attribute's own name; a clear error when it is gone."""
        owner = importlib.import_module(self.module)
        *path, name = self.attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or name not in vars(owner):
            dist, version = installed_fairseq()
            raise AttributeError(
                f"fairseq_patches.{self.name}: {self.target} does not exist in {dist} {version} (the patch was "
                f"written for {' '.join(WRITTEN_FOR)}): install {WRITTEN_FOR[0]}=={WRITTEN_FOR[1]}, or port the patch "
                "(beats_fairseq/fairseq_patches.py)"
            )
        return owner, name

    def original(self):
        owner, name = self.owner_and_name()
        return vars(owner)[name]


#: The patches, in the order they are applied.
PATCHES: List[Patch] = []


def patches(module: str, attribute: str):
    """Register the decorated ``make(original) -> replacement`` as the patch of ``module.attribute``."""

    def register(make):
        PATCHES.append(Patch(module, attribute, make))
        return make

    return register


# --------------------------------------------------------------------------- the patches
@patches("fairseq.models.distributed_fairseq_model", "DistributedDataParallel")
def ddp_of_cpu_modules(original):
    """Written for ve-fairseq 0.12.3, which wraps the model in ``DistributedDataParallel(module,
    device_ids=[device_id], output_device=device_id)`` (``ddp_backend=pytorch_ddp``): torch refuses
    both arguments for a module on the CPU, so multi-process training on CPUs (gloo) stopped there.
    The replacement drops them for a CPU module (what torch requires) and is torch's class for a
    CUDA one."""
    return cpu_aware_ddp(original)


@patches("fairseq.distributed.utils", "all_gather_list")
def all_gather_list_on_gloo(original):
    """Written for ve-fairseq 0.12.3, whose ``all_gather_list`` (it gathers the validation outputs
    that cannot be summed, e.g. the predictions behind mAP) allocates CUDA buffers, so it fails on
    CPU ranks. With a gloo group the replacement uses ``torch.distributed.all_gather_object``;
    other backends keep fairseq's function."""
    return gloo_aware_all_gather_list(original)


@patches("fairseq.checkpoint_utils", "torch_persistent_save")
def atomic_checkpoint_writes(original):
    """Written for ve-fairseq 0.12.3, which writes a checkpoint through a temporary name only when
    its ``PathManager`` says the file system supports renaming, and never flushes it to disk. The
    replacement writes local files to ``NAME.tmp``, fsyncs them and renames them over ``NAME``: a
    kill never leaves a truncated checkpoint under its final name."""
    return safe_torch_persistent_save(original)


@patches("fairseq.checkpoint_utils", "PathManager")
def atomic_checkpoint_copies(original):
    """Written for ve-fairseq 0.12.3, which writes ``checkpoint_last.pt`` and ``checkpoint_best.pt``
    as copies of the first checkpoint file of an update (``PathManager.copy``), in place: a kill
    during the copy leaves a truncated ``checkpoint_last.pt`` that the next launch cannot read. The
    replacement's ``copy`` of local files is atomic (temporary name, fsync, rename)."""
    return atomic_copy_path_manager(original)


@patches("fairseq.checkpoint_utils", "load_checkpoint")
def resume_past_broken_last_checkpoint(original):
    """Written for ve-fairseq 0.12.3, which stops with ``EOFError`` (or a zip error) when
    ``checkpoint_last.pt`` is broken (e.g. written by a run without the two patches above). The
    replacement names the broken file and resumes from the newest intact ``checkpoint*.pt`` of the
    folder, or stops with a message when there is none."""
    return checked_load_checkpoint(original)


@patches("fairseq.data.iterators", "EpochBatchIterator.first_batch")
def first_batch_with_readable_audio(original):
    """Written for ve-fairseq 0.12.3, which keeps the first batch of an epoch iterator as the
    "dummy" batch a rank runs (with zero gradient) when its own batch is empty; a first batch made
    only of unreadable clips (``task.bad_audio=skip``) collates to ``{}`` and fairseq stops
    (``Invalid dummy batch``). For a dataset of this project (one with ``probe()``, see
    ``data/audio_dataset.py``) the replacement takes the first batch holding a readable clip;
    other datasets keep fairseq's first batch."""
    return property(lambda itr: first_readable_batch(itr, original.fget))


def first_readable_batch(itr, original_first_batch):
    """``itr``'s first batch with at least one readable clip (``probe``: reads outside an epoch)."""
    dataset = itr.dataset
    probe = getattr(dataset, "probe", None)
    if (probe is None or not getattr(dataset, "supports_fetch_outside_dataloader", True)
            or len(itr.frozen_batches) == 0):
        return original_first_batch(itr)
    for batch in itr.frozen_batches:
        with probe():  # not an epoch's read: no bad-audio count, log line or known-bad entry
            sample = itr.collate_fn([dataset[i] for i in batch])
        if sample:
            return sample
    raise RuntimeError("every clip of the dataset was skipped as bad audio (see the warnings above)")


# --------------------------------------------------------------------------- for clusters
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
    """Written for ve-fairseq 0.12.3, whose ``save_checkpoint`` alone knows which updates are saved.
    A graceful stop writes ``checkpoint_last.pt`` at the update it stops after, unless fairseq
    already saved that update (an interval or end-of-epoch checkpoint): the replacement notes the
    update of every save, on every rank, so that all ranks make the same choice (a save may hold
    collectives). It keeps fairseq's ``save_checkpoint.best``, which fairseq reads and writes as an
    attribute of the module's function (``preemption.py``)."""
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
    """Written for ve-fairseq 0.12.3, which cannot resume a multi-process run with torch 2.6 or
    later. When a multi-process run resumes, rank 0 reads ``checkpoint_last.pt`` and broadcasts the training state, pickled, to the other ranks,
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


def start_of_training(cfg, trainer) -> None:
    """Stop signals, the folder's lock (every rank stops if another run holds it), the rank watch."""
    preemption.install()
    holder = run_lock.hold(cfg.save_dir) if trainer.should_save_checkpoint_on_current_rank else None
    if any_rank(holder is not None):
        if holder is not None:
            logger.error(run_lock.folder_held_message(cfg.save_dir, holder))
        raise run_lock.FolderHeldError()
    rank_watch.start(float(getattr(trainer.task.cfg, "rank_timeout", rank_watch.DEFAULT_TIMEOUT)))


# --------------------------------------------------------------------------- applying them
def apply_fairseq_patches() -> None:
    """Replace every attribute of :data:`PATCHES` in the installed fairseq, each once per process;
    those of ``fairseq_cli`` once it is imported (see the module docstring)."""
    import fairseq

    applied = getattr(fairseq, MARKER, None)
    if applied is None:
        applied = set()
        setattr(fairseq, MARKER, applied)
    due = [patch for patch in PATCHES if patch.name not in applied
           and (not patch.module.startswith("fairseq_cli") or patch.module in sys.modules)]
    replacements = [(patch, *patch.owner_and_name()) for patch in due]  # all found before any change
    for patch, owner, name in replacements:
        setattr(owner, name, patch.make(vars(owner)[name]))
        applied.add(patch.name)
    if due:
        logger.debug("fairseq patched: %s", ", ".join(p.target for p in due))


def installed_fairseq() -> Tuple[Optional[str], Optional[str]]:
    """(distribution, version) of the installed fairseq, or (None, None)."""
    for dist in FAIRSEQ_DISTRIBUTIONS:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def check_fairseq_version() -> Optional[str]:
    """Warn (:class:`FairseqVersionWarning`) when the installed fairseq is not :data:`WRITTEN_FOR`;
    returns the warning's text, or None."""
    installed = installed_fairseq()
    if installed == WRITTEN_FOR or installed == (None, None):  # no fairseq: its import fails on its own
        return None
    message = (f"beats_fairseq's patches of fairseq were written for {' '.join(WRITTEN_FOR)}, but {installed[0]} "
               f"{installed[1]} is installed: training may fail or misbehave; install {WRITTEN_FOR[0]}=="
               f"{WRITTEN_FOR[1]} (scripts/setup_env.sh) or see beats_fairseq/fairseq_patches.py")
    warnings.warn(message, FairseqVersionWarning, stacklevel=2)
    return message


check_fairseq_version()
