"""``BeatsAudioTask``: the base of the three training tasks (not registered itself).

Data: ``task.data`` is a folder holding ``{split}.tsv`` (first line the root folder, then
``relpath<TAB>num_samples``). Clips are read with soundfile, down-mixed and resampled to 16 kHz
when needed, cropped to ``max_sample_size`` (AudioSet: 160000 = 10 s) and batched by total audio
length (``dataset.max_tokens`` counts samples). Bad files are skipped with one log line each
(``bad_audio: skip``) or stop the run (``fail``).

What ``beats_pretraining``, ``beats_tokenizer_training`` and ``beats_audio_classification`` share:

* **bad-audio counts**: every batch carries the number of clips its collater dropped as bad;
  the task logs their sum as ``bad_audio`` (summed over ranks and DataLoader workers) in
  every train/valid log line, so the end-of-epoch ``train`` line holds the epoch's count;
* **non-finite loss** (``nonfinite_loss``): ``fail`` stops with ``FloatingPointError`` naming
  the batch's files; ``skip`` skips the whole update on every rank (see
  ``beats_fairseq/distributed.py``) and logs ``nonfinite_skipped``;
* **exact waveforms under bf16/fp16** (``exact_waveforms``, on with ``common.bf16``): batches
  hold float64 waveforms, which fairseq's cast of the batch (float32 tensors only) leaves
  alone, so the fbank and the tokenizer labels are computed in float32 from exact samples;
* **models**: config keys of older checkpoints upgraded (``checkpoint.upgrade_model_cfg``); the
  model's seed is ``common.seed`` (masks and augmentations, the per-clip rule of ``seeding.py``);
  a model built for training gets the external checkpoints it needs from the task
  (:meth:`BeatsAudioTask.prepare_model_cfg` and :meth:`BeatsAudioTask.attach`), one rebuilt from
  its checkpoint (``from_checkpoint``) reads no other file; those loads draw from a forked torch
  generator, so a model's initial weights depend on ``common.seed`` only, not on the tokenizer,
  teacher or start it loads (iter1 and iter2 students start from the same weights);
* fairseq's patches (``beats_fairseq/fairseq_patches.py``), applied when a task is built:
  multi-process training on CPU (gloo) with ``ddp_backend=pytorch_ddp``, crash-safe checkpoint
  files, a dummy batch with readable audio, bad files found by DataLoader workers named in the
  main process; and for clusters (docs/scale.md): a graceful stop on SIGUSR1/SIGTERM after the
  current update, a lost rank named within ``rank_timeout``, one run per ``checkpoint.save_dir``;
* **exact resume** (``docs/scale.md``): batches rebuilt every epoch from (seed, epoch) and
  DataLoader workers forked afresh every epoch (``rebuild_batches``/``persistent_workers``
  below), crash-safe checkpoint files (``beats_fairseq/safe_checkpoints.py``), and the
  known-bad files of every split kept in the checkpoint (``get_checkpoint_dict``).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import metrics
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import FairseqTask
from omegaconf import II, MISSING

from ..checkpoint import upgrade_model_cfg
from ..data.audio import MIN_SAMPLES_ONE_PATCH
from ..data.audio_dataset import AudioDataset
from ..distributed import NonFiniteGuard, zero_loss, zeroed
from ..fairseq_patches import apply_fairseq_patches
from ..rank_watch import DEFAULT_TIMEOUT
from ..modules.fbank import SAMPLE_RATE

logger = logging.getLogger(__name__)

CROP_CHOICES = ChoiceEnum(["random", "start", "center"])
BAD_AUDIO_CHOICES = ChoiceEnum(["skip", "fail"])
NONFINITE_CHOICES = ChoiceEnum(["fail", "skip"])
# Splits named like this are read in order, uncropped at the start and unshuffled.
EVAL_SPLIT_PREFIXES = ("valid", "test", "eval", "dev")
# Task fields fairseq reads that exact resume needs at their defaults: not tunables, not in the recipes.
RESUME_FIELDS = ("rebuild_batches", "persistent_workers")


@dataclass
class BeatsAudioTaskConfig(FairseqDataclass):
    # data
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv manifests"})
    sample_rate: int = field(
        default=SAMPLE_RATE,
        metadata={"help": f"must be {SAMPLE_RATE}: the rate of the model's fbank, fixed by BEATs; audio files at "
                  "other rates are resampled to it when read"},
    )
    max_sample_size: Optional[int] = field(
        default=160000, metadata={"help": "crop longer clips to this many samples (160000 = 10 s)"}
    )
    min_sample_size: int = field(
        default=MIN_SAMPLES_ONE_PATCH,
        metadata={"help": "drop manifest entries / files shorter than this (2800 samples = one patch row)"},
    )
    crop: CROP_CHOICES = field(default="random", metadata={"help": "where long clips are cropped in training"})
    # robustness
    bad_audio: BAD_AUDIO_CHOICES = field(
        default="skip", metadata={"help": "unreadable/empty/too short files: skip with a log line, or fail"}
    )
    nonfinite_loss: NONFINITE_CHOICES = field(
        default="fail",
        metadata={"help": "non-finite loss: fail (stop, naming the batch's files) or skip the update on all ranks"},
    )
    max_nonfinite_skips: int = field(
        default=100, metadata={"help": "nonfinite_loss=skip: stop after this many consecutive skipped updates"}
    )
    rank_timeout: float = field(
        default=DEFAULT_TIMEOUT,
        metadata={"help": "multi-process runs: seconds without a heartbeat after which a rank counts as lost (killed, "
                  "its node failed); the other ranks then stop, naming it (docs/scale.md)"},
    )
    # mixed precision
    exact_waveforms: bool = field(
        default=II("common.bf16"),
        metadata={"help": "collate waveforms as float64 so fairseq's bf16/fp16 cast of the batch leaves them "
                  "exact (fbank and labels as in float32); default: on with common.bf16, set it for common.fp16"},
    )
    seed: int = II("common.seed")
    # Read by fairseq's FairseqTask.get_batch_iterator. Not listed in the recipes: exact resume
    # needs these values (docs/scale.md, "What goes wrong with fairseq's defaults").
    rebuild_batches: bool = field(
        default=True,
        metadata={"help": "new batches every epoch from (seed, epoch); fairseq's default (false) keeps those of the "
                  "epoch the iterator was built in, which differ after a resume"},
    )
    persistent_workers: bool = field(
        default=False,
        metadata={"help": "keep DataLoader workers across epochs; false forks them every epoch after set_epoch "
                  "(persistent workers keep the epoch of their fork: other crops after a resume)"},
    )


def check_sample_rate(cfg) -> None:
    """``task.sample_rate`` must be the fbank's rate: any other value would feed it wrong audio."""
    rate = getattr(cfg, "sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(
            f"task.sample_rate={rate}: BEATs' fbank is fixed at {SAMPLE_RATE} Hz, so the task reads audio at "
            f"{SAMPLE_RATE} Hz (files at other rates are resampled when read); set task.sample_rate={SAMPLE_RATE} "
            "or leave it out"
        )


def _flag(cfg, name: str, default=False) -> bool:
    """``cfg.name`` as a bool; ``default`` when it is an unresolvable interpolation (bare configs)."""
    try:
        value = getattr(cfg, name, default)
    except Exception:  # omegaconf InterpolationResolutionError without a parent config
        return default
    return value if isinstance(value, bool) else default


def is_training_split(split: str) -> bool:
    return not split.startswith(EVAL_SPLIT_PREFIXES)


class BeatsAudioTask(FairseqTask):
    """Audio from ``{split}.tsv`` manifests, the training-step policies and resume state of all tasks."""

    cfg: BeatsAudioTaskConfig

    def __init__(self, cfg, **kwargs):
        check_sample_rate(cfg)
        apply_fairseq_patches()
        super().__init__(cfg, **kwargs)
        self.nonfinite = NonFiniteGuard(str(getattr(cfg, "nonfinite_loss", "fail")),
                                        getattr(cfg, "max_nonfinite_skips", 100))

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)

    # ------------------------------------------------------------------ model
    def build_model(self, cfg, from_checkpoint=False):
        """Upgrade older config keys, build, seed; for training (``from_checkpoint=False``, a resumed
        run included) :meth:`prepare_model_cfg` before building and :meth:`attach` after."""
        upgrade_model_cfg(cfg)
        external = None
        if not from_checkpoint:
            # Loading a tokenizer, teacher or start builds models: under a forked generator, so the new
            # model's initial weights are those of common.seed whatever was loaded (equal students for
            # every iteration of a loop).
            with torch.random.fork_rng(devices=[]):
                external = self.prepare_model_cfg(cfg)
        model = super().build_model(cfg, from_checkpoint)
        if hasattr(model, "set_seed"):
            model.set_seed(self.cfg.seed)
        if not from_checkpoint:
            self.attach(model, external)
        return model

    def prepare_model_cfg(self, cfg):
        """Check ``cfg`` and load the external checkpoints a model built for training needs, writing into
        ``cfg`` what the checkpoint must keep; returns what :meth:`attach` gets (None: nothing)."""
        return None

    def attach(self, model, external) -> None:
        """Give the freshly built ``model`` what :meth:`prepare_model_cfg` returned."""

    # ------------------------------------------------------------------ data
    def manifest_path(self, split: str) -> str:
        path = os.path.join(self.cfg.data, f"{split}.tsv")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"manifest {path} not found: task.data={self.cfg.data!r} must be a folder with {split}.tsv "
                "(see manifests/README.md to build one)"
            )
        return path

    def build_audio_dataset(self, split: str, dataset_cls=AudioDataset, **overrides) -> AudioDataset:
        training = is_training_split(split)
        kwargs = dict(
            sample_rate=self.cfg.sample_rate,
            max_sample_size=self.cfg.max_sample_size,
            min_sample_size=self.cfg.min_sample_size,
            crop=str(self.cfg.crop) if training else "start",
            shuffle=training,
            bad_audio=str(self.cfg.bad_audio),
            seed=self.cfg.seed,
        )
        kwargs.update(overrides)
        return dataset_cls(self.manifest_path(split), **kwargs)

    def load_dataset(self, split: str, combine: bool = False, task_cfg=None, **kwargs):
        self.datasets[split] = self.build_audio_dataset(split)
        logger.info("%s: %d clips from %s", split, len(self.datasets[split]), self.manifest_path(split))

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq's batch_by_size drops the remainder that does not fill a multiple of
        # required_batch_size_multiple (default 8): evaluation must see every clip.
        if not getattr(dataset, "shuffle", True) and not args:
            kwargs["required_batch_size_multiple"] = 1
        if isinstance(dataset, AudioDataset):
            dataset.source_dtype = torch.float64 if _flag(self.cfg, "exact_waveforms") else torch.float32
        return super().get_batch_iterator(dataset, *args, **kwargs)

    # ------------------------------------------------------------------ steps
    def batch_files(self, sample, training: bool) -> List[str]:
        """Audio paths of the clips of ``sample`` (``split: path`` when several splits could hold it)."""
        ids = sample.get("id") if sample else None
        if ids is None:
            return []
        splits = [s for s, d in self.datasets.items() if hasattr(d, "path") and is_training_split(s) == training]
        out = []
        for split in splits:
            dataset = self.datasets[split]
            for i in ids.tolist():
                path = dataset.path(i) if 0 <= i < len(dataset) else f"<id {i}>"
                out.append(path if len(splits) == 1 else f"{split}: {path}")
        return out

    def _forward(self, sample, model, criterion, optimizer=None):
        amp = isinstance(optimizer, AMPOptimizer)
        device = sample["net_input"]["source"].device.type if "net_input" in (sample or {}) else "cpu"
        with torch.autograd.profiler.record_function("forward"):
            with torch.autocast(device_type=device, enabled=amp):
                return criterion(model, sample)

    def get_checkpoint_dict(self):
        """Saved by fairseq in ``extra_state[task class name]``: the known-bad items of every split."""
        known = {s: sorted(d.known_bad) for s, d in self.datasets.items() if getattr(d, "known_bad", None)}
        return {type(self).__name__: {"known_bad_audio": known}}

    def set_checkpoint_dict(self, state) -> None:
        for split, ids in (state or {}).get("known_bad_audio", {}).items():
            if hasattr(self.datasets.get(split), "known_bad"):
                self.datasets[split].known_bad.update(int(i) for i in ids)

    def _counts(self, sample, logging_output, skipped: bool, ignore: bool):
        logging_output["bad_audio"] = 0 if ignore else int((sample or {}).get("num_bad_audio", 0))
        logging_output["nonfinite_skipped"] = int(skipped and not ignore)
        return logging_output

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's train step, plus the non-finite loss policy and the bad-audio count."""
        model.train()
        model.set_num_updates(update_num)
        self.nonfinite.begin(model, update_num)
        loss, sample_size, logging_output = self._forward(sample, model, criterion, optimizer)
        skipped = not bool(torch.isfinite(loss.detach()).all())
        if skipped:
            self.nonfinite.on_nonfinite(loss, self.batch_files(sample, training=True),
                                        f"in training update {update_num + 1}")
            loss, sample_size, logging_output = zero_loss(model), 0, zeroed(logging_output)
        if ignore_grad:
            loss = loss * 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        return loss, sample_size, self._counts(sample, logging_output, skipped, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        if self.nonfinite.should_skip():
            return
        super().optimizer_step(optimizer, model, update_num)

    def valid_step(self, sample, model, criterion, **kwargs):
        model.eval()
        with torch.no_grad():
            loss, sample_size, logging_output = criterion(model, sample)
        skipped = not bool(torch.isfinite(loss.detach()).all())
        if skipped:
            files = self.batch_files(sample, training=False)
            if self.nonfinite.policy == "fail":
                self.nonfinite.on_nonfinite(loss, files, "in validation")
            logger.warning("non-finite validation loss; batch left out of the metrics: %s", ", ".join(files[:16]))
            loss, sample_size, logging_output = loss.new_zeros(()), 0, zeroed(logging_output)
        return loss, sample_size, self._counts(sample, logging_output, skipped, False)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        for key in ("bad_audio", "nonfinite_skipped"):
            metrics.log_scalar_sum(key, sum(int(log.get(key, 0)) for log in logging_outputs), priority=300)

    def begin_epoch(self, epoch, model):
        for split, dataset in self.datasets.items():
            if getattr(dataset, "known_bad", None):
                logger.warning("%s: %s", split, dataset.bad_audio_report())

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
