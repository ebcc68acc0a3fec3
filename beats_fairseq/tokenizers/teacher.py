"""Frozen teachers for tokenizer training (paper section 3.2.2).

A teacher maps a waveform batch to per-patch targets ``(B, N, D)``:

* ``features``: the last-layer encoder output (or that of ``layer``, 0-based) ``(B, N, C)`` (``backbone.extract_features``) of
  any model of this project: ``beats`` and ``beats_encoder`` (official pre-trained BEATs
  checkpoints load as these), or the encoder of a fine-tuned classifier;
* ``logits``: the per-patch logits of a fine-tuned classifier, via
  ``patch_logits(source, padding_mask)`` (``beats_classifier``, official fine-tuned
  checkpoints; the iter3+ supervised teacher).

``auto`` picks ``logits`` for models with per-patch logits and ``features`` otherwise (a classifier
with a ``band_stats`` head has none). The
teacher is loaded with :func:`beats_fairseq.loading.load_teacher`, frozen (no gradients, eval
mode for good) and kept outside the student's modules, so it is never saved in tokenizer
checkpoints and never seen by the optimizer or DDP; it follows the input's device lazily.
"""

import logging
import types

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

TEACHER_TARGETS = ("auto", "features", "logits")


def _stay_in_eval(self, mode=True):
    return nn.Module.train(self, False)


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, and eval mode that a parent's ``.train()`` cannot undo."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.train = types.MethodType(_stay_in_eval, module)  # survives copy.deepcopy
    return module.eval()


def follow_device(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Move ``module`` (kept outside a model's module tree) to ``tensor``'s device; its first parameter."""
    param = next(module.parameters())
    if param.device != tensor.device:
        module.to(tensor.device)
        param = next(module.parameters())
    return param


class Teacher:
    """A frozen model and the way to get per-patch targets from it."""

    def __init__(self, model: nn.Module, target: str = "auto", source: str = "teacher", layer: int = -1):
        if target not in TEACHER_TARGETS:
            raise ValueError(f"teacher target must be one of {TEACHER_TARGETS}, got {target!r}")
        if getattr(model, "is_tokenizer", False):
            raise ValueError(f"teacher {source!r} is a tokenizer; use a pre-trained or fine-tuned BEATs checkpoint")
        patch_logits = getattr(model, "has_patch_logits", False)
        if target == "auto":
            target = "logits" if patch_logits else "features"
        needed = "per-patch logits" if target == "logits" else "a backbone"
        if not (patch_logits if target == "logits" else hasattr(model, "backbone")):
            head = getattr(getattr(model, "cfg", None), "head_pooling", None)
            raise ValueError(
                f"{source}: teacher target {target!r} needs a model with {needed}, got {type(model).__name__}"
                + (f" with a {head} head" if head else "")
                + "; use a pre-trained (features) or fine-tuned classifier with a mean or bands head (logits) checkpoint"
            )
        if layer >= 0:
            layers = len(model.backbone.encoder.layers) if hasattr(model, "backbone") else 0
            if target != "features" or layer >= layers:
                raise ValueError(f"{source}: teacher layer {layer} needs teacher target 'features' and a layer below "
                                 f"the teacher's {layers} (model.teacher_layer=-1: the last layer)")
        self.model = freeze(model)
        self.target = target
        self.layer = None if layer < 0 else layer
        self.source = source
        self.dim = self.probe_dim()

    @torch.no_grad()
    def probe_dim(self) -> int:
        device = next(self.model.parameters()).device
        out, _ = self(torch.zeros(1, 16000, device=device))
        return int(out.size(-1))

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, padding_mask=None):
        """(targets ``(B, N, D)`` float32, patch padding mask or None)."""
        source = source.to(follow_device(self.model, source).dtype)
        if self.target == "logits":
            out, mask = self.model.patch_logits(source, padding_mask)
        else:
            out, mask = self.model.backbone.extract_features(source, padding_mask, layer=self.layer)
        if out.dim() != 3:
            raise RuntimeError(f"teacher {self.source!r} gave {tuple(out.shape)}, expected per-patch (B, N, D) targets")
        return out.float(), mask
