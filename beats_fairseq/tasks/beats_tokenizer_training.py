"""``beats_tokenizer_training``: train a ``beats_tokenizer`` by distilling a frozen teacher.

The data side is that of every task of this project (``tasks/audio_task.py``: ``task.data`` folder
with ``{split}.tsv`` manifests, cropping, bad-audio policy); this task only adds the teacher.
When a model is built for training, the teacher named by ``model.teacher_path`` is loaded with
:func:`beats_fairseq.loading.load_teacher`, frozen and attached to the model, and its target size is
written into ``model.teacher_dim`` (hence into the checkpoint's config). Models rebuilt from a
checkpoint (``load_model_ensemble_and_task``, ``beats_fairseq.load``) never read the teacher.
A run starts from random weights, or from those of ``model.init_from`` (``tasks/init_from.py``).
"""

import logging
from dataclasses import dataclass

from fairseq.tasks import register_task
from omegaconf import open_dict

from ..loading import load_teacher
from .audio_task import BeatsAudioTask, BeatsAudioTaskConfig
from .init_from import load_start, tokenizer_start

logger = logging.getLogger(__name__)


@dataclass
class BeatsTokenizerTrainingTaskConfig(BeatsAudioTaskConfig):
    pass


@register_task("beats_tokenizer_training", dataclass=BeatsTokenizerTrainingTaskConfig)
class BeatsTokenizerTrainingTask(BeatsAudioTask):
    cfg: BeatsTokenizerTrainingTaskConfig

    def prepare_model_cfg(self, cfg):
        """The frozen teacher of ``model.teacher_path`` (its target size goes into ``model.teacher_dim``),
        then the start of ``model.init_from`` (its architecture and codebook go into ``cfg``)."""
        name = getattr(cfg, "_name", None)
        if name != "beats_tokenizer":
            raise ValueError(f"task beats_tokenizer_training trains model beats_tokenizer, got model._name={name!r}")
        if cfg.estimator_layers <= 0:
            raise ValueError("model.estimator_layers must be > 0 to train a tokenizer (the paper uses 3)")
        teacher = load_teacher(cfg.teacher_path, str(cfg.teacher_target), getattr(cfg, "teacher_layer", -1))
        if cfg.teacher_dim in (0, None):
            with open_dict(cfg):
                cfg.teacher_dim = teacher.dim  # kept in the checkpoint config
        elif cfg.teacher_dim != teacher.dim:
            raise ValueError(
                f"model.teacher_dim={cfg.teacher_dim} but teacher {cfg.teacher_path!r} gives {teacher.dim}-dim "
                "targets: set model.teacher_dim=0 to take it from the teacher"
            )
        return teacher, tokenizer_start(cfg)  # the estimator's size depends on teacher_dim

    def attach(self, model, external) -> None:
        teacher, start = external
        load_start(model, start)
        model.set_teacher(teacher)
