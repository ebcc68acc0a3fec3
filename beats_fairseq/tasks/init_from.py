"""Starting a training run from an existing model: ``model.init_from`` of pre-training and tokenizer
training, ``model.pretrained_path`` of fine-tuning.

Read only when a task builds a model for training, never when a model is rebuilt from its own
checkpoint. The checkpoint is read by :func:`beats_fairseq.loading.read_starting_point`, i.e. by
``beats_fairseq.load`` (official or of this project, one key mapping: ``checkpoint.py``):

1. :func:`take_architecture`: its architecture (``ARCH_FIELDS``, plus the parts' own sizes: the
   label predictor's depth, a tokenizer's codebook) replaces the recipe's in the model config, hence
   in every checkpoint the run writes; one log line lists the values that changed. Regularisation
   (dropout, LayerDrop, layer-wise gradient decay) and the fbank statistics stay the recipe's.
2. :func:`pretraining_start` / :func:`tokenizer_start` / :func:`finetuning_start`: the parts of the
   model it initialises (a :class:`Start`); one log line names them, and those initialised afresh
   instead, and why.
3. :func:`load_start`: once the model is built, every part loads strictly (missing or unexpected
   keys: an error naming the file, the part and the keys).

A relaunch reads the checkpoint again (the model must be built with the same architecture) and
fairseq then restores ``checkpoint_last.pt`` over these weights, so the resumed run continues
exactly where it stopped.
"""

import logging
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from omegaconf import OmegaConf, open_dict

from ..checkpoint import load_strict
from ..loading import read_starting_point
from ..models.beats_tokenizer import PROJECT_ONLY_KEYS

logger = logging.getLogger(__name__)

OPTION = "model.init_from"
# What each model starts from: model_kind() of the checkpoint.
PRETRAINED_KINDS = ("pretraining", "encoder", "classifier")
TOKENIZER_KINDS = ("tokenizer",)


class Start(NamedTuple):
    """The weights a freshly built model starts from (:func:`load_start`)."""

    option: str  # the config key that named the file
    path: str
    parts: Dict[str, Dict[str, torch.Tensor]]  # {submodule name: its state dict}
    # {submodule name: keys kept from the freshly built model}: bookkeeping of the run that wrote the file
    keep: Dict[str, Tuple[str, ...]] = {}


def config_value(cfg, key: str, defaults=None):
    """``cfg.key``; from the dataclass ``defaults`` when an OmegaConf config leaves it out."""
    if OmegaConf.is_config(cfg) and key not in cfg:
        return getattr(defaults, key, None)
    return getattr(cfg, key)


def set_config(cfg, **values) -> None:
    """Set model config fields (OmegaConf configs: also fields the config does not list yet)."""
    if OmegaConf.is_config(cfg):
        with open_dict(cfg):
            for key, value in values.items():
                setattr(cfg, key, value)
    else:
        for key, value in values.items():
            setattr(cfg, key, value)


def take_architecture(cfg, values: dict, source: str, defaults=None) -> None:
    """Write ``values`` (the checkpoint's) into the model config ``cfg``; one log line lists those that
    differ from the config's (``defaults``: see :func:`config_value`)."""
    changed = {k: (config_value(cfg, k, defaults), v) for k, v in values.items() if config_value(cfg, k, defaults) != v}
    if changed:
        logger.info("architecture from %s (config value -> checkpoint value): %s", source,
                    ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
    else:
        logger.info("architecture from %s: the same as the config's", source)
    set_config(cfg, **values)


def finetuning_start(cfg, defaults=None) -> Optional[Start]:
    """``model.pretrained_path`` of a ``beats_classifier`` config: the backbone (``defaults``: see
    :func:`config_value`)."""
    path = config_value(cfg, "pretrained_path", defaults)
    if not path:
        return None
    start = read_starting_point(path, PRETRAINED_KINDS, "model.pretrained_path")
    take_architecture(cfg, start.architecture, path, defaults)
    logger.info("model.pretrained_path: backbone from %s (%d tensors)", path, len(start.part("backbone")))
    return Start("model.pretrained_path", path, {"backbone": start.part("backbone")})


def pretraining_start(cfg) -> Optional[Start]:
    """``model.init_from`` of a ``beats`` config (its codebook size already that of the labels): the
    backbone, and the label predictor and head when it is a ``beats`` checkpoint with as many codes."""
    path = config_value(cfg, "init_from")
    if not path:
        return None
    start = read_starting_point(path, PRETRAINED_KINDS, OPTION)
    values = start.architecture
    codes = start.cfg.codebook_size if start.kind == "pretraining" else None
    predictor = codes == cfg.codebook_size
    if predictor:
        values["label_predictor_layers"] = start.cfg.label_predictor_layers
    take_architecture(cfg, values, path)
    parts = {"backbone": start.part("backbone")}
    if predictor:
        parts.update(label_predictor=start.part("label_predictor"), label_head=start.part("label_head"))
        logger.info("%s: backbone, label predictor and label head from %s", OPTION, path)
    else:
        why = (f"it predicts {codes} codes, the labels have {cfg.codebook_size}" if codes is not None
               else f"the checkpoint holds none: {start.kind} model")
        logger.info("%s: backbone from %s; label predictor and label head initialised afresh (%s)", OPTION, path, why)
    return Start(OPTION, path, parts)


def tokenizer_start(cfg) -> Optional[Start]:
    """``model.init_from`` of a ``beats_tokenizer`` config (``teacher_dim`` already the teacher's): backbone,
    quantizer and codebook, and the estimator when the checkpoint has one of the same size."""
    path = config_value(cfg, "init_from")
    if not path:
        return None
    start = read_starting_point(path, TOKENIZER_KINDS, OPTION)
    values = dict(start.architecture, codebook_size=start.cfg.codebook_size, quant_dim=start.cfg.quant_dim)
    take_architecture(cfg, values, path)
    parts = {name: start.part(name) for name in ("backbone", "quantize_layer", "quantize")}
    size = (start.cfg.estimator_layers, start.cfg.teacher_dim)
    if size[0] > 0 and size == (cfg.estimator_layers, cfg.teacher_dim):
        parts["estimator"] = start.part("estimator")
        logger.info("%s: backbone, quantizer, codebook and estimator from %s", OPTION, path)
    else:
        why = ("it has none (official tokenizers do not)" if size[0] == 0 else
               f"it has {size[0]} layers predicting {size[1]} values, the config {cfg.estimator_layers} and "
               f"{cfg.teacher_dim}")
        logger.info("%s: backbone, quantizer and codebook from %s; estimator initialised afresh (%s)", OPTION, path,
                    why)
    # code-usage bookkeeping counts the updates of the run that wrote the file: this run starts its own
    own = tuple(k[len("quantize."):] for k in PROJECT_ONLY_KEYS)
    return Start(OPTION, path, parts, {"quantize": own})


def load_start(model, start: Optional[Start]) -> None:
    """Load every part of ``start`` strictly into the freshly built ``model``."""
    if start is None:
        return
    for name, state in start.parts.items():
        module = getattr(model, name)
        kept = {k: v for k, v in module.state_dict().items() if k in start.keep.get(name, ())}
        load_strict(module, {**state, **kept}, f"{start.option}={start.path!r} ({name})")
