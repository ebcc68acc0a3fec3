"""``beats_encoder``: a bare pre-trained BEATs encoder (official pre-trained checkpoints).

What ``beats_fairseq.load`` returns for an official pre-trained checkpoint, and what the
``beats-convert`` tool writes for one; pre-training checkpoints (model ``beats``) hold
the same backbone plus their label predictor.
"""

from dataclasses import dataclass

from fairseq.models import BaseFairseqModel, register_model

from ..checkpoint import backbone_from_official, backbone_to_official, load_strict
from ..modules.backbone import BeatsBackbone, BeatsBackboneConfig, backbone_cfg_from_official, backbone_cfg_to_official


@dataclass
class BeatsEncoderModelConfig(BeatsBackboneConfig):
    pass


@register_model("beats_encoder", dataclass=BeatsEncoderModelConfig)
class BeatsEncoderModel(BaseFairseqModel):
    def __init__(self, cfg: BeatsEncoderModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BeatsBackbone(cfg)

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def forward(self, source, padding_mask=None, **kwargs):
        return self.extract_features(source, padding_mask, **kwargs)

    def extract_features(self, source, padding_mask=None, **kwargs):
        """(features ``(B, N, C)``, patch padding mask or None), as the official ``BEATs``."""
        return self.backbone.extract_features(source, padding_mask, **kwargs)

    @classmethod
    def from_official(cls, state, source="official checkpoint"):
        model = cls(BeatsEncoderModelConfig(**backbone_cfg_from_official(state["cfg"], source)))
        load_strict(model, backbone_from_official(state["model"]), source)
        return model

    def to_official(self):
        cfg = dict(backbone_cfg_to_official(self.cfg), finetuned_model=False)
        return {"cfg": cfg, "model": backbone_to_official(self.state_dict())}
