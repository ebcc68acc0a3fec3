"""``beats_pretraining``: raw audio from fairseq ``.tsv`` manifests for masked audio modelling.

``task.data`` is a folder holding ``{split}.tsv`` (first line the root folder, then
``relpath<TAB>num_samples``). Clips are read with soundfile, down-mixed and resampled
to 16 kHz when needed, cropped to ``max_sample_size`` (AudioSet: 160000 = 10 s) and
batched by total audio length (``dataset.max_tokens`` counts samples). Bad files are
skipped with one log line each (``bad_audio: skip``) or stop the run (``fail``).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.audio import MIN_SAMPLES_ONE_PATCH
from ..data.audio_dataset import AudioDataset

logger = logging.getLogger(__name__)

CROP_CHOICES = ChoiceEnum(["random", "start", "center"])
BAD_AUDIO_CHOICES = ChoiceEnum(["skip", "fail"])
# Splits named like this are read in order, uncropped at the start and unshuffled.
EVAL_SPLIT_PREFIXES = ("valid", "test", "eval", "dev")


@dataclass
class BeatsPretrainingTaskConfig(FairseqDataclass):
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
    bad_audio: BAD_AUDIO_CHOICES = field(
        default="skip", metadata={"help": "unreadable/empty/too short files: skip with a log line, or fail"}
    )
    seed: int = II("common.seed")


@dataclass
class BeatsPretrainingConfig(BeatsPretrainingTaskConfig):
    # Only the pre-training task has it (the tasks deriving from BeatsPretrainingTaskConfig do not).
    # Format, validity rules and checks: beats_fairseq/data/label_store.py.
    precomputed_labels: Optional[str] = field(
        default=None,
        metadata={"help": "folder of tokenizer labels written by beats-precompute-labels for model.tokenizer_path "
                  "(checked against the manifest, crop and tokenizer); null: the model computes them on the fly"},
    )


@register_task("beats_pretraining", dataclass=BeatsPretrainingConfig)
class BeatsPretrainingTask(FairseqTask):
    cfg: BeatsPretrainingTaskConfig
    label_tokenizer = None  # identity of the model's tokenizer, checked against precomputed labels

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
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
            from ..data.label_store import LabelStore, PrecomputedLabelsDataset

            store = LabelStore(label_dir, split)
            if self.label_tokenizer is not None:
                store.check_tokenizer(self.label_tokenizer)
            self.datasets[split] = self.build_audio_dataset(split, PrecomputedLabelsDataset, store=store)
            logger.info("%s: precomputed labels from %s", split, label_dir)
        else:
            self.datasets[split] = self.build_audio_dataset(split)
        logger.info("%s: %d clips from %s", split, len(self.datasets[split]), self.manifest_path(split))

    def check_label_tokenizer(self, model) -> None:
        """Precomputed labels must come from the model's tokenizer (``model.tokenizer_path``)."""
        from ..data.label_store import tokenizer_identity

        tokenizer = model.__dict__.get("tokenizer")
        path = getattr(model.cfg, "tokenizer_path", None)
        if not path or not hasattr(tokenizer, "extract_labels"):
            raise ValueError(
                "task.precomputed_labels is set but model.tokenizer_path is empty: name the trained tokenizer the "
                "labels were computed with (it is checked against the labels and sets the codebook size)"
            )
        self.label_tokenizer = tokenizer_identity(tokenizer, path)
        for dataset in self.datasets.values():
            if hasattr(dataset, "store"):
                dataset.store.check_tokenizer(self.label_tokenizer)

    def begin_epoch(self, epoch, model):
        for split, dataset in self.datasets.items():
            if getattr(dataset, "num_bad", 0):
                logger.warning("%s: %s", split, dataset.bad_audio_report())

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
