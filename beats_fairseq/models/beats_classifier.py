"""``beats_classifier``: BEATs encoder + linear head on the mean over valid patches.

Logits are ``head(x_n)`` averaged over the valid patches n, which equals a linear head on
the mean-pooled output (paper section 3.3.3) and is exactly what the official fine-tuned
``extract_features`` computes before its sigmoid.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model

from ..checkpoint import backbone_from_official, backbone_to_official, load_strict, rename
from ..modules.backbone import BeatsBackbone, BeatsEncoderConfig, encoder_cfg_from_official, encoder_cfg_to_official


@dataclass
class BeatsClassifierConfig(BeatsEncoderConfig):
    num_classes: int = field(default=527, metadata={"help": "number of output classes"})
    multilabel: bool = field(default=True, metadata={"help": "sigmoid outputs (multi-label); False: softmax"})
    predictor_dropout: float = field(default=0.0, metadata={"help": "dropout on the encoder output before the head"})


def masked_mean(x: torch.Tensor, padding_mask) -> torch.Tensor:
    """Mean over dim 1 of ``x (B, N, D)`` ignoring padded positions (official rule)."""
    if padding_mask is None or not padding_mask.any():
        return x.mean(dim=1)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(dim=1) / valid.sum(dim=1)


@register_model("beats_classifier", dataclass=BeatsClassifierConfig)
class BeatsClassifierModel(BaseFairseqModel):
    def __init__(self, cfg: BeatsClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BeatsBackbone(cfg)
        self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
        self.head = nn.Linear(cfg.encoder_embed_dim, cfg.num_classes)

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def patch_logits(self, source, padding_mask=None):
        """(per-patch logits ``(B, N, classes)``, patch padding mask or None)."""
        x, padding_mask = self.backbone.extract_features(source, padding_mask)
        return self.head(self.predictor_dropout(x)), padding_mask

    def forward(self, source, padding_mask=None, **kwargs):
        """Clip logits ``(B, classes)`` and the patch padding mask."""
        logits, padding_mask = self.patch_logits(source, padding_mask)
        return masked_mean(logits, padding_mask), padding_mask

    def probabilities(self, logits):
        return torch.sigmoid(logits) if self.cfg.multilabel else torch.softmax(logits, dim=-1)

    def extract_features(self, source, padding_mask=None, **kwargs):
        """Official API: (probabilities ``(B, classes)``, patch padding mask or None)."""
        logits, padding_mask = self.forward(source, padding_mask)
        return self.probabilities(logits), padding_mask

    @classmethod
    def from_official(cls, state, source="official checkpoint"):
        cfg = state["cfg"]
        model = cls(
            BeatsClassifierConfig(
                **encoder_cfg_from_official(cfg, source),
                num_classes=cfg.get("predictor_class", 527),
                predictor_dropout=cfg.get("predictor_dropout", 0.1),
                multilabel=True,
            )
        )
        load_strict(model, rename(backbone_from_official(state["model"]), {"backbone.predictor.": "head."}), source)
        model.label_dict = state.get("label_dict")
        return model

    def to_official(self):
        cfg = dict(
            encoder_cfg_to_official(self.cfg),
            finetuned_model=True,
            predictor_class=self.cfg.num_classes,
            predictor_dropout=self.cfg.predictor_dropout,
        )
        sd = self.state_dict()
        model = dict(backbone_to_official(sd), **rename({k: v for k, v in sd.items() if k.startswith("head.")}, {"head.": "predictor."}))
        return {"cfg": cfg, "model": model, "label_dict": getattr(self, "label_dict", None)}
