"""``beats_pretraining``: raw audio from fairseq ``.tsv`` manifests for masked audio modelling.

``task.data`` is a folder holding ``{split}.tsv`` (first line the root folder, then
``relpath<TAB>num_samples``). Clips are read with soundfile, down-mixed and resampled
to 16 kHz when needed, cropped to ``max_sample_size`` (AudioSet: 160000 = 10 s) and
batched by total audio length (``dataset.max_tokens`` counts samples). Bad files are
skipped with one log line each (``bad_audio: skip``) or stop the run (``fail``).

Shared by the three training tasks (this one, ``beats_tokenizer_training`` and
``beats_audio_classification`` derive from it):

* **bad-audio counts**: every batch carries the number of clips its collater dropped as bad;
  the task logs their sum as ``bad_audio`` (summed over ranks and DataLoader workers) in
  every train/valid log line, so the end-of-epoch ``train`` line holds the epoch's count;
* **non-finite loss** (``nonfinite_loss``): ``fail`` stops with ``FloatingPointError`` naming
  the batch's files; ``skip`` skips the whole update on every rank (see
  ``beats_fairseq/distributed.py``) and logs ``nonfinite_skipped``;
* **exact waveforms under bf16/fp16** (``exact_waveforms``, on with ``common.bf16``): batches
  hold float64 waveforms, which fairseq's cast of the batch (float32 tensors only) leaves
  alone, so the fbank and the tokenizer labels are computed in float32 from exact samples;
* **masks**: the model's mask seed is ``common.seed`` (the per-clip rule, ``seeding.py``);
* multi-process training on CPU (gloo) works with ``ddp_backend=pytorch_ddp``;
* **exact resume** (``docs/scale.md``): batches rebuilt every epoch from (seed, epoch) and
  DataLoader workers forked afresh every epoch (``rebuild_batches``/``persistent_workers``
  below), crash-safe checkpoint files (``beats_fairseq/safe_checkpoints.py``), and the
  known-bad files of every split kept in the checkpoint (``get_checkpoint_dict``).
"""

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import metrics
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING, open_dict

from ..checkpoint import upgrade_model_cfg
from ..data.audio import MIN_SAMPLES_ONE_PATCH
from ..data.audio_dataset import AudioDataset
from ..data.label_store import LabelStore, PrecomputedLabelsDataset, tokenizer_identity
from ..distributed import NonFiniteGuard, enable_cpu_ddp, zero_loss, zeroed
from ..loading import load_frozen_tokenizer
from ..safe_checkpoints import enable_safe_checkpoints
from ..tokenizers.trained import FrozenTokenizer
from .init_from import load_start, pretraining_start

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
    sample_rate: int = field(default=16000, metadata={"help": "rate the model expects; other rates are resampled"})
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
    # mixed precision
    exact_waveforms: bool = field(
        default=II("common.bf16"),
        metadata={"help": "collate waveforms as float64 so fairseq's bf16/fp16 cast of the batch leaves them "
                  "exact (fbank and labels as in float32); default: on with common.bf16, set it for common.fp16"},
    )
    seed: int = II("common.seed")
    # Read by fairseq's FairseqTask.get_batch_iterator. Not listed in the recipes: exact resume
    # needs these values (docs/scale.md, "What was wrong before").
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


def _flag(cfg, name: str, default=False) -> bool:
    """``cfg.name`` as a bool; ``default`` when it is an unresolvable interpolation (bare configs)."""
    try:
        value = getattr(cfg, name, default)
    except Exception:  # omegaconf InterpolationResolutionError without a parent config
        return default
    return value if isinstance(value, bool) else default


@dataclass
class BeatsPretrainingConfig(BeatsAudioTaskConfig):
    # Only the pre-training task has it (the tasks deriving from BeatsAudioTaskConfig do not).
    # Format, validity rules and checks: beats_fairseq/data/label_store.py.
    precomputed_labels: Optional[str] = field(
        default=None,
        metadata={"help": "folder of tokenizer labels written by beats-precompute-labels for model.tokenizer_path "
                  "(checked against the manifest, crop and tokenizer); null: the model computes them on the fly"},
    )


class _GoodFirstBatch:
    """fairseq keeps the first batch of an iterator as the "dummy" batch it runs (with zero
    gradient) on a rank whose own batch is empty. A first batch made only of bad clips
    collates to ``{}`` and fairseq stops (``Invalid dummy batch``); take the first batch that
    holds a readable clip instead."""

    @property
    def first_batch(self):
        if not getattr(self.dataset, "supports_fetch_outside_dataloader", True):
            return "DUMMY"
        probe = getattr(self.dataset, "probe", contextlib.nullcontext)
        for batch in self.frozen_batches:
            with probe():  # not an epoch's read: no bad-audio count, log line or known-bad entry
                sample = self.collate_fn([self.dataset[i] for i in batch])
            if sample:
                return sample
        raise RuntimeError("every clip of the dataset was skipped as bad audio (see the warnings above)")


@register_task("beats_pretraining", dataclass=BeatsPretrainingConfig)
class BeatsPretrainingTask(FairseqTask):
    cfg: BeatsAudioTaskConfig
    label_tokenizer = None  # identity of the model's tokenizer, checked against precomputed labels

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.nonfinite = NonFiniteGuard(str(getattr(cfg, "nonfinite_loss", "fail")),
                                        getattr(cfg, "max_nonfinite_skips", 100))

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        enable_cpu_ddp()
        enable_safe_checkpoints()
        return cls(cfg)

    def build_model(self, cfg, from_checkpoint=False):
        """Models built for training (also when resuming) get the frozen tokenizer of
        ``model.tokenizer_path``, whose codebook size is written into ``model.codebook_size``;
        models rebuilt from a checkpoint (``from_checkpoint``: inference) never read it. Config keys of
        older checkpoints are upgraded first (``checkpoint.upgrade_model_cfg``)."""
        upgrade_model_cfg(cfg)
        tokenizer = None
        path = getattr(cfg, "tokenizer_path", None)
        if path and not from_checkpoint:
            tokenizer = FrozenTokenizer(load_frozen_tokenizer(path), source=path)
            if cfg.codebook_size != tokenizer.codebook_size:
                logger.info("model.codebook_size=%d from tokenizer %s", tokenizer.codebook_size, path)
                with open_dict(cfg):
                    cfg.codebook_size = tokenizer.codebook_size  # kept in the checkpoint config
        start = pretraining_start(cfg) if not from_checkpoint and getattr(cfg, "_name", None) == "beats" else None
        model = super().build_model(cfg, from_checkpoint)
        load_start(model, start)
        if tokenizer is not None:
            model.set_tokenizer(tokenizer)
        if hasattr(model, "set_seed"):
            model.set_seed(self.cfg.seed)
        if getattr(self.cfg, "precomputed_labels", None) and not from_checkpoint:
            self.check_label_tokenizer(model)
        return model

    def manifest_path(self, split: str) -> str:
        path = os.path.join(self.cfg.data, f"{split}.tsv")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"manifest {path} not found: task.data={self.cfg.data!r} must be a folder with {split}.tsv "
                "(see manifests/README.md to build one)"
            )
        return path

    def build_audio_dataset(self, split: str, dataset_cls=AudioDataset, **overrides) -> AudioDataset:
        training = not split.startswith(EVAL_SPLIT_PREFIXES)
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
        label_dir = getattr(self.cfg, "precomputed_labels", None)
        if label_dir:
            store = LabelStore(label_dir, split)
            if self.label_tokenizer is not None:
                store.check_tokenizer(self.label_tokenizer)
            self.datasets[split] = self.build_audio_dataset(split, PrecomputedLabelsDataset, store=store)
            logger.info("%s: precomputed labels from %s", split, label_dir)
        else:
            self.datasets[split] = self.build_audio_dataset(split)
        logger.info("%s: %d clips from %s", split, len(self.datasets[split]), self.manifest_path(split))

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq's batch_by_size drops the remainder that does not fill a multiple of
        # required_batch_size_multiple (default 8): evaluation must see every clip.
        if not getattr(dataset, "shuffle", True) and not args:
            kwargs["required_batch_size_multiple"] = 1
        if isinstance(dataset, AudioDataset):
            dataset.source_dtype = torch.float64 if _flag(self.cfg, "exact_waveforms") else torch.float32
        itr = super().get_batch_iterator(dataset, *args, **kwargs)
        if hasattr(itr, "frozen_batches") and not isinstance(itr, _GoodFirstBatch):
            itr.__class__ = type(f"GoodFirstBatch{type(itr).__name__}", (_GoodFirstBatch, type(itr)), {})
        return itr

    # ------------------------------------------------------------------ steps
    def batch_files(self, sample, training: bool) -> List[str]:
        """Audio paths of the clips of ``sample`` (``split: path`` when several splits could hold it)."""
        ids = sample.get("id") if sample else None
        if ids is None:
            return []
        splits = [s for s, d in self.datasets.items() if hasattr(d, "path")
                  and s.startswith(EVAL_SPLIT_PREFIXES) != training]
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

    def remember_bad(self, sample, training: bool) -> None:
        """Items of ``sample`` found bad (in a DataLoader worker, say) join their dataset's ``known_bad``
        in this process, so the workers of the next epoch skip them without opening them. Only when
        one dataset of the kind (training or evaluation) is loaded: ids do not name their split."""
        items = (sample or {}).get("bad_items")
        datasets = [d for s, d in self.datasets.items() if hasattr(d, "remember_bad")
                    and s.startswith(EVAL_SPLIT_PREFIXES) != training]
        if items and len(datasets) == 1:
            datasets[0].remember_bad(items)

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
        self.remember_bad(sample, training=True)
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
        self.remember_bad(sample, training=False)
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

    def check_label_tokenizer(self, model) -> None:
        """Precomputed labels must come from the model's tokenizer (``model.tokenizer_path``)."""
        tokenizer = getattr(model, "frozen_tokenizer", None)
        path = getattr(model.cfg, "tokenizer_path", None)
        if not path or tokenizer is None:
            raise ValueError(
                "task.precomputed_labels is set but model.tokenizer_path is empty: name the trained tokenizer the "
                "labels were computed with (it is checked against the labels and sets the codebook size)"
            )
        self.label_tokenizer = tokenizer_identity(tokenizer.model, path)
        for dataset in self.datasets.values():
            if hasattr(dataset, "store"):
                dataset.store.check_tokenizer(self.label_tokenizer)

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
