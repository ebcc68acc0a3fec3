"""Checkpoint format helpers: reading, the official kinds, strict key checks, the key mapping, saving.

Nothing here knows a model class: loading a checkpoint as a model is ``beats_fairseq/loading.py``.

Official BEATs checkpoints are ``{'cfg': dict, 'model': state_dict[, 'label_dict']}``.
The one key mapping (documented in docs/parity.md) between them and this project:

* every model here keeps the official backbone under ``backbone``: official ``k`` <->
  ``backbone.k`` for ``patch_embedding``, ``layer_norm``, ``post_extract_proj``, ``encoder.*``;
* fine-tuned classifiers: official ``predictor.*`` <-> ``head.*``;
* tokenizers: official ``quantize_layer.*`` and ``quantize.*`` keep their names.

Key sets are compared strictly in both directions: a mismatch raises
:class:`CheckpointKeyError` listing the missing and unexpected keys.

Model config keys renamed or moved since checkpoints were first written are upgraded by
:func:`upgrade_model_cfg` (the tasks call it before fairseq builds a model from a config).
"""

import contextlib
import logging
import os
from typing import Dict, Iterable

import torch
from omegaconf import OmegaConf, open_dict

logger = logging.getLogger(__name__)


# Model config keys of older checkpoints: {model name: {old key: new key}} ...
RENAMED_MODEL_KEYS = {"beats_tokenizer": {"quant_n": "codebook_size"}}
# ... and {model name: keys now set elsewhere} (the tokenizer's loss weights are the criterion's).
MOVED_MODEL_KEYS = {"beats_tokenizer": ("distill_weight", "commitment_weight")}


def upgrade_model_cfg(cfg) -> None:
    """Rename, in place, the model config keys an older checkpoint wrote under another name, and drop
    those that moved out of the model config. Plain objects (dataclass configs) are left alone."""
    if not hasattr(cfg, "keys"):
        return
    name = cfg.get("_name")
    renamed = {old: new for old, new in RENAMED_MODEL_KEYS.get(name, {}).items() if old in cfg}
    moved = [key for key in MOVED_MODEL_KEYS.get(name, ()) if key in cfg]
    if not renamed and not moved:
        return
    with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
        for old, new in renamed.items():
            value = cfg.pop(old)
            if new not in cfg:
                cfg[new] = value
        for key in moved:
            cfg.pop(key)
    logger.info("model %s: config of an older checkpoint upgraded (renamed %s; dropped %s)", name,
                ", ".join(f"{a} -> {b}" for a, b in renamed.items()) or "none", ", ".join(moved) or "none")


class CheckpointKeyError(RuntimeError):
    """The state dict of a checkpoint does not match the model built from its config."""


def read_checkpoint(path: str) -> dict:
    """``torch.load`` with weights-only loading; errors name the file and what to do."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(
            f"could not read checkpoint {path!r} with torch.load(weights_only=True): {exc}. "
            "If you trust the file, convert it with torch.load(weights_only=False) and save it again."
        ) from exc


def is_official(state: dict) -> bool:
    """Official checkpoints have a plain ``cfg`` dict of model fields and no fairseq ``task`` section."""
    cfg = state.get("cfg")
    return isinstance(cfg, dict) and "model" in state and "encoder_layers" in cfg and "task" not in cfg


def official_kind(cfg: dict) -> str:
    """``tokenizer``, ``classifier`` (fine-tuned) or ``encoder`` (pre-trained)."""
    if "quant_n" in cfg:
        return "tokenizer"
    return "classifier" if cfg.get("finetuned_model", False) else "encoder"


def check_keys(expected: Iterable[str], found: Iterable[str], source: str) -> None:
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointKeyError(
            f"state dict of {source} does not match the model built from its config:\n"
            f"  missing keys ({len(missing)}): {missing}\n  unexpected keys ({len(unexpected)}): {unexpected}\n"
            "Check that the checkpoint and the config describe the same architecture."
        )


def load_strict(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    check_keys(module.state_dict().keys(), state_dict.keys(), source)
    module.load_state_dict(state_dict, strict=True)


def rename(state_dict: Dict[str, torch.Tensor], mapping: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """Rename key prefixes: ``mapping = {old_prefix: new_prefix}``; other keys are kept."""
    out = {}
    for key, value in state_dict.items():
        for old, new in mapping.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def backbone_from_official(state_dict):
    return {"backbone." + k: v for k, v in state_dict.items()}


def backbone_to_official(state_dict):
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def save_official(path: str, cfg: dict, state_dict: Dict[str, torch.Tensor], label_dict=None) -> None:
    state = {"cfg": dict(cfg), "model": {k: v.detach().cpu() for k, v in state_dict.items()}}
    if label_dict is not None:
        state["label_dict"] = dict(label_dict)
    torch.save(state, path)
    logger.info("wrote official-format checkpoint %s", path)
