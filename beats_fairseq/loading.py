"""Loading checkpoints as models: the one place above ``models/`` that knows the model classes.

* :func:`load`: any checkpoint of this project (through fairseq's
  ``checkpoint_utils.load_model_ensemble_and_task``) or any official BEATs checkpoint;
* :func:`from_official`: an official ``{'cfg', 'model'[, 'label_dict']}`` dict as this project's model
  (a classifier's ``label_dict``: :func:`with_label_dict`, the same for converted checkpoints);
* :func:`model_kind`: ``classifier``, ``tokenizer``, ``pretraining`` or ``encoder``;
* :func:`load_teacher` and :func:`load_frozen_tokenizer`: the frozen external checkpoints that
  the training tasks attach to the model they build (never part of its state dict);
* :func:`read_starting_point`: the weights and architecture a training run starts from
  (``model.init_from``, ``model.pretrained_path``), read through :func:`load`.

A checkpoint loaded for inference never reads another file: teachers and tokenizers are attached
by the tasks only when a model is built for training (``from_checkpoint=False``).
"""

import logging
from typing import Dict, NamedTuple, Optional, Sequence

import torch

import torch.nn as nn
from fairseq import checkpoint_utils

from .checkpoint import check_keys, is_official, official_kind, read_checkpoint
from .models.beats import BeatsModel
from .models.beats_classifier import BeatsClassifierModel
from .models.beats_encoder import BeatsEncoderModel
from .models.beats_tokenizer import BeatsTokenizerModel
from .modules.backbone import ARCH_FIELDS
from .tokenizers.teacher import Teacher
from .tokenizers.trained import NotATokenizerError

logger = logging.getLogger(__name__)

OFFICIAL_MODEL_CLASSES = {"encoder": BeatsEncoderModel, "classifier": BeatsClassifierModel,
                          "tokenizer": BeatsTokenizerModel}


def official_model_class(kind: str):
    """The model class an official checkpoint of ``kind`` (:func:`official_kind`) loads as."""
    return OFFICIAL_MODEL_CLASSES[kind]


def from_official(state: dict, source: str = "official checkpoint"):
    """Build this project's model from an official ``{'cfg', 'model'[, 'label_dict']}`` dict."""
    model = official_model_class(official_kind(state["cfg"])).from_official(state, source)
    return with_label_dict(model, state)


def with_label_dict(model, state: dict):
    """A classifier whose config names no classes gets the checkpoint's top-level ``label_dict`` (that of
    an official checkpoint, kept at the top level by ``beats-convert``) as ``model.label_dict``: an official
    checkpoint and its conversion give the same class names."""
    label_dict = state.get("label_dict")
    if label_dict and isinstance(model, BeatsClassifierModel) and model.label_dict is None:
        model.label_dict = label_dict
    return model


def load(path: str, device: str = "cpu", arg_overrides: Optional[dict] = None):
    """Load any checkpoint of this project or any official BEATs checkpoint, in eval mode.

    The architecture always comes from the checkpoint's own config, and no other file is read.
    Returns a model with ``extract_features(source, padding_mask=None)`` (tokenizers: ``extract_labels``).
    """
    state = read_checkpoint(path)
    if is_official(state):
        model = from_official(state, source=path)
    else:
        if "cfg" not in state or state["cfg"] is None or "model" not in state:
            raise RuntimeError(f"{path!r} is neither a fairseq checkpoint nor an official BEATs checkpoint")
        # non-strict in fairseq, strict here: a mismatch names the file and every missing and unexpected key
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=arg_overrides, strict=False)
        check_keys(models[0].state_dict().keys(), state["model"].keys(), repr(path))
        model = with_label_dict(models[0], state)
    return model.to(device).eval()


def model_kind(model) -> str:
    """``classifier``, ``tokenizer``, ``pretraining`` (model ``beats``) or ``encoder``."""
    if isinstance(model, BeatsClassifierModel):
        return "classifier"
    if getattr(model, "is_tokenizer", False):
        return "tokenizer"
    if isinstance(model, BeatsModel):
        return "pretraining"
    return "encoder"


def load_teacher(path: str, target: str = "auto", layer: int = -1) -> Teacher:
    """Load ``path`` (any checkpoint :func:`load` reads) as a frozen :class:`Teacher` (``layer``: see there)."""
    if not path:
        raise ValueError("no teacher checkpoint given: set model.teacher_path to a pre-trained or fine-tuned model")
    model = load(path)
    teacher = Teacher(model, target, source=path, layer=layer)
    logger.info("teacher %s: %s, target %s%s of size %d", path, type(model).__name__, teacher.target,
                "" if layer < 0 else f" of layer {layer}", teacher.dim)
    return teacher


def load_frozen_tokenizer(path: str, device: str = "cpu") -> nn.Module:
    """Load a tokenizer checkpoint (this project's ``beats_tokenizer`` or an official
    ``Tokenizer_*.pt``) as a frozen module in eval mode for good.

    The result has ``extract_labels(source, padding_mask=None) -> LongTensor (B, N)``; its
    parameters need no gradient, a parent's ``.train()`` leaves it in eval mode, and labelling
    never changes its codebook. Raises :class:`NotATokenizerError` naming ``path`` for any other
    checkpoint (pre-trained, fine-tuned, ...).
    """
    model = load(path, device=device)
    if model_kind(model) != "tokenizer" or not hasattr(model, "extract_labels"):
        raise NotATokenizerError(
            f"{path!r} is not a tokenizer checkpoint (it holds a {type(model).__name__}); give a checkpoint "
            "written by the beats_tokenizer_training task or an official Tokenizer_*.pt"
        )
    if not model.quantize.initialised:
        raise NotATokenizerError(f"{path!r}: the tokenizer codebook was never initialised (no training step ran)")
    return model.freeze()


class StartingPoint(NamedTuple):
    """A model a training run starts from (:func:`read_starting_point`), in this project's names."""

    path: str
    kind: str  # model_kind(): pretraining, encoder, classifier or tokenizer
    cfg: object  # its model config
    state: Dict[str, torch.Tensor]  # its state dict

    @property
    def architecture(self) -> dict:
        """The architecture fields of its backbone (``modules/backbone.py``: ``ARCH_FIELDS``)."""
        return {name: getattr(self.cfg, name) for name in ARCH_FIELDS}

    def part(self, prefix: str) -> Dict[str, torch.Tensor]:
        """The tensors under the submodule ``prefix`` (``"backbone"``), with the prefix removed."""
        return {k[len(prefix) + 1:]: v for k, v in self.state.items() if k.startswith(prefix + ".")}


def read_starting_point(path: str, kinds: Sequence[str], option: str) -> StartingPoint:
    """Read ``path`` (any checkpoint :func:`load` reads: official, or of this project) as the start of a
    training run; its :func:`model_kind` must be one of ``kinds``, else an error naming ``option``."""
    model = load(path)
    kind = model_kind(model)
    if kind not in kinds:
        raise ValueError(f"{option}={path!r} holds a {kind} model ({type(model).__name__}); {option} takes a "
                         f"{' or '.join(kinds)} checkpoint (official, or of this project)")
    return StartingPoint(path, kind, model.cfg, model.state_dict())
