"""Every change this project makes to fairseq's own objects, in one place.

The tasks of this project call :func:`apply_fairseq_patches` when they are built; it replaces the
fairseq attributes listed below once per process (the marker ``fairseq.beats_fairseq_patches``
says they are in place; a second call changes nothing). Each patch is a function named after
what it fixes: it receives fairseq's original attribute and returns its replacement, and its
docstring gives the fairseq version it was written for and why it is needed. The decorator
:func:`patches` names the attribute it replaces. The code the replacements run lives with its
topic (``distributed.py``: CPU DDP; ``safe_checkpoints.py``: crash-safe checkpoint files).

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
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, List, Optional, Tuple

from .distributed import cpu_aware_ddp, gloo_aware_all_gather_list
from .safe_checkpoints import atomic_copy_path_manager, checked_load_checkpoint, safe_torch_persistent_save

logger = logging.getLogger(__name__)

#: The fairseq distribution and version the patches were written (and are tested) for.
WRITTEN_FOR = ("ve-fairseq", "0.12.3")
#: Attribute of the ``fairseq`` package set once the patches are in place.
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


# --------------------------------------------------------------------------- applying them
def apply_fairseq_patches() -> None:
    """Replace every attribute of :data:`PATCHES` in the installed fairseq, once per process."""
    import fairseq

    if getattr(fairseq, MARKER, False):
        return
    replacements = [(patch, *patch.owner_and_name()) for patch in PATCHES]  # all found before any change
    for patch, owner, name in replacements:
        setattr(owner, name, patch.make(vars(owner)[name]))
    setattr(fairseq, MARKER, True)
    logger.debug("fairseq patched: %s", ", ".join(p.target for p in PATCHES))


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
