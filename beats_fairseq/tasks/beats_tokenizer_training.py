"""``beats_tokenizer_training``: train a ``beats_tokenizer`` by distilling a frozen teacher.

The data side is the pre-training task's (``beats_pretraining``: ``task.data`` folder with
``{split}.tsv`` manifests, cropping, bad-audio policy); this task only adds the teacher.
When a model is built for training, the teacher named by ``model.teacher_path`` is loaded with
:func:`beats_fairseq.loading.load_teacher`, frozen and attached to the model, and its target size is
written into ``model.teacher_dim`` (hence into the checkpoint's config). Models rebuilt from a
checkpoint (``load_model_ensemble_and_task``, ``beats_fairseq.load``) never read the teacher.
"""

import logging
from dataclasses import dataclass

from fairseq.tasks import register_task
from omegaconf import open_dict

from ..loading import load_teacher
from .init_from import load_start, tokenizer_start
from .beats_pretraining import BeatsAudioTaskConfig, BeatsPretrainingTask

logger = logging.getLogger(__name__)


@dataclass
class BeatsTokenizerTrainingTaskConfig(BeatsAudioTaskConfig):
    pass


@register_task("beats_tokenizer_training", dataclass=BeatsTokenizerTrainingTaskConfig)
class BeatsTokenizerTrainingTask(BeatsPretrainingTask):
    cfg: BeatsTokenizerTrainingTaskConfig

    def build_model(self, cfg, from_checkpoint=False):
        name = getattr(cfg, "_name", None)
        if name != "beats_tokenizer":
            raise ValueError(f"task beats_tokenizer_training trains model beats_tokenizer, got model._name={name!r}")
        teacher = None
        if not from_checkpoint:
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
        start = None if from_checkpoint else tokenizer_start(cfg)
        model = super().build_model(cfg, from_checkpoint)
        load_start(model, start)
        if teacher is not None:
            model.set_teacher(teacher)
        return model
