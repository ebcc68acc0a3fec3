"""``beats_pretraining``: masked audio modelling on raw audio from fairseq ``.tsv`` manifests.

The data, the training-step policies and exact resume are those of every task of this project
(``tasks/audio_task.py``). This task adds the labels the model predicts:

* computed on the fly by the model's tokenizer: iter1's random projection (saved in the model),
  or, from iter2 on, the frozen trained tokenizer of ``model.tokenizer_path``, loaded when a model
  is built for training (a resumed run included; its codebook size is written into
  ``model.codebook_size``) and never when one is rebuilt from its checkpoint;
* or read from ``task.precomputed_labels`` (written by ``beats-precompute-labels``), checked
  against the manifest, the crop and the tokenizer of ``model.tokenizer_path``.

A run starts from random weights, or from those of ``model.init_from`` (``tasks/init_from.py``).
"""

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from fairseq.tasks import register_task
from omegaconf import open_dict

from ..data.label_store import LabelStore, PrecomputedLabelsDataset, tokenizer_identity
from ..loading import load_frozen_tokenizer
from ..tokenizers.trained import FrozenTokenizer
from .audio_task import BeatsAudioTask, BeatsAudioTaskConfig
from .init_from import Start, load_start, pretraining_start

logger = logging.getLogger(__name__)


@dataclass
class BeatsPretrainingConfig(BeatsAudioTaskConfig):
    # Only the pre-training task has it (the tasks deriving from BeatsAudioTaskConfig do not).
    # Format, validity rules and checks: beats_fairseq/data/label_store.py.
    precomputed_labels: Optional[str] = field(
        default=None,
        metadata={"help": "folder of tokenizer labels written by beats-precompute-labels for model.tokenizer_path "
                  "(checked against the manifest, crop and tokenizer); null: the model computes them on the fly"},
    )


class PretrainingExternals(NamedTuple):
    """What a ``beats`` model built for training gets (:meth:`BeatsPretrainingTask.attach`)."""

    tokenizer: Optional[FrozenTokenizer]  # of model.tokenizer_path; None: the random projection
    start: Optional[Start]  # of model.init_from; None: random weights


@register_task("beats_pretraining", dataclass=BeatsPretrainingConfig)
class BeatsPretrainingTask(BeatsAudioTask):
    cfg: BeatsPretrainingConfig
    label_tokenizer = None  # identity of the model's tokenizer, checked against precomputed labels

    def prepare_model_cfg(self, cfg) -> "PretrainingExternals":
        """The frozen tokenizer of ``model.tokenizer_path`` (its codebook size goes into
        ``model.codebook_size``), then the start of ``model.init_from`` (its architecture goes into
        ``cfg``; whether its label predictor fits depends on that codebook size)."""
        tokenizer = None
        path = getattr(cfg, "tokenizer_path", None)
        if path:
            tokenizer = FrozenTokenizer(load_frozen_tokenizer(path), source=path)
            if cfg.codebook_size != tokenizer.codebook_size:
                logger.info("model.codebook_size=%d from tokenizer %s", tokenizer.codebook_size, path)
                with open_dict(cfg):
                    cfg.codebook_size = tokenizer.codebook_size  # kept in the checkpoint config
        return PretrainingExternals(tokenizer, pretraining_start(cfg))

    def attach(self, model, external: "PretrainingExternals") -> None:
        load_start(model, external.start)
        if external.tokenizer is not None:
            model.set_tokenizer(external.tokenizer)
        if getattr(self.cfg, "precomputed_labels", None):
            self.check_label_tokenizer(model)

    def load_dataset(self, split: str, combine: bool = False, task_cfg=None, **kwargs):
        label_dir = getattr(self.cfg, "precomputed_labels", None)
        if not label_dir:
            return super().load_dataset(split, combine, task_cfg, **kwargs)
        store = LabelStore(label_dir, split)
        if self.label_tokenizer is not None:
            store.check_tokenizer(self.label_tokenizer)
        self.datasets[split] = self.build_audio_dataset(split, PrecomputedLabelsDataset, store=store)
        logger.info("%s: %d clips from %s, precomputed labels from %s", split, len(self.datasets[split]),
                    self.manifest_path(split), label_dir)

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
