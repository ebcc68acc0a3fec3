"""``beats_audio_classification``: fine-tune ``beats_classifier`` on labelled audio.

``task.data`` holds ``{split}.tsv`` manifests, ``{split}.{label_ext}`` label files (one line
per manifest line, comma-separated class ids) and the class map ``task.labels`` (AudioSet
``class_labels_indices.csv`` form, header ``index,mid,display_name``). Label files are
validated on load (unknown ids, line-count mismatch, empty lines, several ids on a
single-label line: errors naming the file and line).

When the model is first built (not when it is reloaded from a fine-tuned checkpoint) the
task writes into ``cfg.model``: the class map (``num_classes``, ``class_names``,
``class_mids``) and, with ``model.pretrained_path``, the architecture fields of the
pre-trained checkpoint; it then loads the pre-trained backbone weights strictly. The
fine-tuned checkpoint is therefore self-contained.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from omegaconf import OmegaConf

from ..data.label_dataset import LabelledAudioDataset, read_weights_file
from ..data.manifest import read_class_map, read_manifest
from ..models.beats_classifier import BeatsClassifierConfig
from .audio_task import BeatsAudioTask, BeatsAudioTaskConfig, is_training_split
from .init_from import config_value, finetuning_start, load_start, set_config

logger = logging.getLogger(__name__)


@dataclass
class BeatsAudioClassificationConfig(BeatsAudioTaskConfig):
    labels: str = field(
        default="labels.csv",
        metadata={"help": "class map (index,mid,display_name); relative paths are relative to task.data"},
    )
    label_ext: str = field(default="lbl", metadata={"help": "label files are {split}.{label_ext} in task.data"})
    multilabel: bool = field(
        default=True, metadata={"help": "multi-label data (BCE, mAP); False: single-label (CE, accuracy)"}
    )
    weighted_sampling: bool = field(
        default=False,
        metadata={"help": "training splits: draw clips with replacement, weights from weights_file or, if unset, "
                  "from the label frequencies (sum of 1/count over a clip's classes)"},
    )
    weights_file: Optional[str] = field(
        default=None,
        metadata={"help": "one sampling weight per training-manifest line (relative to task.data); "
                  "empty: weights from the label frequencies"},
    )
    epoch_samples: int = field(
        default=0, metadata={"help": "weighted sampling: clips drawn per epoch (0: the training-set size)"}
    )


def check_frozen_encoder_under_ddp(model) -> None:
    """Frozen-encoder updates leave the encoder without gradients: torch's DistributedDataParallel
    then stops at the next update unless it looks for unused parameters. Say so before it does."""
    from torch.nn.parallel import DistributedDataParallel

    ddp, inner = None, model
    while hasattr(inner, "module"):  # fairseq: ModuleProxyWrapper(DistributedDataParallel(model))
        ddp = inner if isinstance(inner, DistributedDataParallel) else ddp
        inner = inner.module
    frozen = getattr(getattr(inner, "cfg", None), "freeze_encoder_updates", 0)
    if ddp is not None and frozen and not ddp.find_unused_parameters:
        raise ValueError(f"model.freeze_encoder_updates={frozen} with several processes needs "
                         "distributed_training.find_unused_parameters=true (the frozen encoder gets no gradients)")


def _in_data(data: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(data, path)


@register_task("beats_audio_classification", dataclass=BeatsAudioClassificationConfig)
class BeatsAudioClassificationTask(BeatsAudioTask):
    cfg: BeatsAudioClassificationConfig

    def class_map_path(self) -> str:
        return _in_data(self.cfg.data, self.cfg.labels)

    def class_map(self):
        return read_class_map(self.class_map_path())

    def label_path(self, split: str) -> str:
        return os.path.join(self.cfg.data, f"{split}.{self.cfg.label_ext}")

    def build_labelled_dataset(self, split: str, num_classes: Optional[int] = None, **overrides):
        training = is_training_split(split)
        manifest = self.manifest_path(split)
        if num_classes is None:
            num_classes = len(self.class_map())
        weights = None
        if training and self.cfg.weighted_sampling:
            if self.cfg.weights_file:
                path = _in_data(self.cfg.data, self.cfg.weights_file)
                weights = read_weights_file(path, len(read_manifest(manifest)))
            else:
                weights = "labels"
        return self.build_audio_dataset(
            split, LabelledAudioDataset, label_path=self.label_path(split), num_classes=num_classes,
            multilabel=self.cfg.multilabel, sample_weights=weights, epoch_samples=self.cfg.epoch_samples or None,
            **overrides,
        )

    def load_dataset(self, split: str, combine: bool = False, task_cfg=None, **kwargs):
        dataset = self.build_labelled_dataset(split)
        self.datasets[split] = dataset
        counts = dataset.class_counts()
        logger.info(
            "%s: %d clips, %d classes (%d without clips), labels %s%s", split, len(dataset), len(counts),
            int((counts == 0).sum()), dataset.label_path,
            f", weighted sampling of {dataset.epoch_samples} clips per epoch" if dataset.sample_weights is not None
            else "",
        )

    # ------------------------------------------------------------------ model
    def prepare_model_cfg(self, cfg):
        """Write the class map and the pre-trained architecture into ``cfg``; returns the start of
        ``model.pretrained_path`` (``tasks/init_from.py``), or None."""
        rows = self.class_map()
        num = (cfg.get("num_classes", 0) if OmegaConf.is_config(cfg) else cfg.num_classes) or 0
        if num and num != len(rows):
            raise ValueError(f"model.num_classes={num} but the class map {self.class_map_path()} has {len(rows)} "
                             "classes (set model.num_classes=0 to take it from the class map)")
        multilabel = config_value(cfg, "multilabel", BeatsClassifierConfig)
        if bool(multilabel) != bool(self.cfg.multilabel):
            raise ValueError(f"model.multilabel={multilabel} but task.multilabel={self.cfg.multilabel}; "
                             "they must agree (the recipes set model.multilabel: ${task.multilabel})")
        set_config(cfg, num_classes=len(rows), class_names=[r["display_name"] for r in rows],
                   class_mids=[r["mid"] for r in rows])
        start = finetuning_start(cfg, BeatsClassifierConfig)
        if start is None:
            logger.info("beats_classifier: random initialisation (model.pretrained_path is empty)")
        return start

    def attach(self, model, start) -> None:
        load_start(model, start)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if getattr(model.cfg, "head_init", "random") == "probe" and model.num_updates == 0:
            self.init_head_from_probe(model)

    def init_head_from_probe(self, model) -> None:
        """``model.head_init=probe`` before the first update of a fresh run (``tasks/head_from_probe.py``),
        on the clips the training split keeps, each read from its start."""
        from .head_from_probe import init_head_from_probe

        training = [s for s, d in self.datasets.items() if is_training_split(s) and hasattr(d, "label_path")]
        if len(training) != 1:
            raise ValueError(f"model.head_init=probe fits the head on one training split; loaded: {training}")
        init_head_from_probe(model, self.build_labelled_dataset(training[0], model.cfg.num_classes, crop="start",
                                                                shuffle=False))

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        if not getattr(self, "_ddp_checked", False):  # the wrapping is fixed for the whole run: once
            check_frozen_encoder_under_ddp(model)
            self._ddp_checked = True
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad, **kwargs)
