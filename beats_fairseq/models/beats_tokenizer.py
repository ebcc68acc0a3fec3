"""``beats_tokenizer``: the BEATs acoustic tokenizer (paper section 3.2.2, official ``Tokenizers``).

Modules (official names, so official tokenizer checkpoints load strictly):

* ``backbone``: :class:`BeatsBackbone` (fbank, patches, Transformer encoder);
* ``quantize_layer``: ``Linear(C, C) -> Tanh -> Linear(C, quant_dim)``;
* ``quantize``: :class:`NormEMAVectorQuantizer` (``codebook_size x quant_dim`` cosine codebook, EMA);
* ``estimator`` (training only, not in official checkpoints): ``proj_in`` (quant_dim -> C), a
  ``estimator_layers``-layer Transformer with the backbone's layer settings (no LayerDrop),
  ``proj_out`` (C -> the teacher's target size ``teacher_dim``).

Training (``forward``) quantizes the encoder output and asks the estimator to predict the
frozen teacher's per-patch targets from the quantized vectors; the criterion
``beats_tokenizer_distillation`` turns the returned cosine and commitment terms into the loss.
The teacher (``teacher_path``) is attached by the ``beats_tokenizer_training`` task and is not
part of the model's state dict.

``extract_labels`` returns ``(B, N)`` code indices; the official one returns them flattened to
``(B*N,)``. Official checkpoints carry no estimator: loading one gives an inference-only
tokenizer (``estimator_layers = 0``) that can label audio but not be trained further.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model

from ..checkpoint import backbone_from_official, backbone_to_official, load_strict
from ..modules.backbone import (
    BeatsBackbone,
    BeatsBackboneConfig,
    backbone_cfg_from_official,
    backbone_cfg_to_official,
    transformer_stack,
)
from ..tokenizers.quantizer import NormEMAVectorQuantizer
from ..tokenizers.teacher import TEACHER_TARGETS

logger = logging.getLogger(__name__)

# Quantizer state that makes dead-code re-seeding resume exactly; not part of the official format.
PROJECT_ONLY_KEYS = ("quantize.last_used", "quantize.tracking_from")

# Official cfg fields of the codebook: (official name, this config's name, official-code default).
OFFICIAL_CODEBOOK_FIELDS = (("quant_n", "codebook_size", 1024), ("quant_dim", "quant_dim", 256))


TEACHER_TARGET_CHOICES = ChoiceEnum(list(TEACHER_TARGETS))


@dataclass
class BeatsTokenizerConfig(BeatsBackboneConfig):
    # codebook (official cfg: quant_n, quant_dim)
    codebook_size: int = field(
        default=1024, metadata={"help": "codebook size K (number of acoustic tokens; quant_n of the official cfg)"})
    quant_dim: int = field(default=256, metadata={"help": "codebook vector size"})
    quant_decay: float = field(default=0.99, metadata={"help": "EMA decay of the codebook counts and sums"})
    quant_eps: float = field(default=1e-5, metadata={"help": "small constant of the codebook EMA"})
    kmeans_init: bool = field(
        default=True, metadata={"help": "initialise the codebook by cosine k-means on the first training batch; "
                                        "False: random unit vectors"})
    kmeans_iters: int = field(default=10, metadata={"help": "k-means iterations of the codebook initialisation"})
    # dead codes (not in the official code)
    dead_code_threshold: float = field(
        default=0.01, metadata={"help": "re-seed codes whose usage EMA is below this fraction of the mean usage "
                                        "with random current inputs (0 disables; not in the official code)"})
    dead_code_interval: int = field(default=100, metadata={"help": "training updates between dead-code checks"})
    # start (read by the beats_tokenizer_training task when a run starts: tasks/init_from.py)
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "start from this tokenizer instead of random weights: an official Tokenizer_*.pt or a "
                  "beats_tokenizer checkpoint of this project. Its architecture and codebook size replace the "
                  "config's; its backbone, quantizer and codebook load strictly, its estimator too when it has one "
                  "of the same size. A relaunch resumes from checkpoint_last.pt; empty: random initialisation"},
    )
    # estimator and teacher (training only; the loss weights are the criterion's)
    estimator_layers: int = field(
        default=3, metadata={"help": "Transformer layers of the estimator that predicts the teacher from the "
                                     "quantized vectors (0: inference-only tokenizer, as official checkpoints)"})
    teacher_path: str = field(
        default="", metadata={"help": "frozen teacher checkpoint (pre-trained beats/official BEATs, or a fine-tuned "
                                      "classifier); read only when training starts, never saved in the tokenizer"})
    teacher_target: TEACHER_TARGET_CHOICES = field(
        default="auto", metadata={"help": "teacher output to distil: features (last layer), logits (per-patch "
                                          "classifier logits) or auto (logits for classifiers, else features)"})
    teacher_layer: int = field(
        default=-1, metadata={"help": "teacher_target=features: the teacher encoder layer (0-based) whose output is "
                                      "distilled; -1: the last layer (the paper)"})
    teacher_dim: int = field(
        default=0, metadata={"help": "size of the teacher targets = estimator output size; 0: taken from the "
                                     "teacher when training starts (then stored in the checkpoint config)"})


class Estimator(nn.Module):
    """Quantized vectors ``(B, N, quant_dim)`` -> teacher-space predictions ``(B, N, teacher_dim)``."""

    def __init__(self, cfg: BeatsTokenizerConfig):
        super().__init__()
        self.proj_in = nn.Linear(cfg.quant_dim, cfg.encoder_embed_dim)
        self.encoder = transformer_stack(cfg, cfg.estimator_layers)
        self.proj_out = nn.Linear(cfg.encoder_embed_dim, cfg.teacher_dim)

    def forward(self, z_q, padding_mask=None):
        x, _ = self.encoder(self.proj_in(z_q), padding_mask)
        return self.proj_out(x)


def check_config(cfg) -> None:
    if cfg.codebook_size < 2 or cfg.quant_dim < 1:
        raise ValueError(f"model.codebook_size={cfg.codebook_size} / quant_dim={cfg.quant_dim}: need codebook_size >= 2, "
                         "quant_dim >= 1")
    if cfg.teacher_target not in TEACHER_TARGETS:
        raise ValueError(f"model.teacher_target={cfg.teacher_target!r}; choose one of {TEACHER_TARGETS}")
    if cfg.estimator_layers < 0:
        raise ValueError(f"model.estimator_layers={cfg.estimator_layers} must be >= 0")
    if cfg.estimator_layers > 0 and cfg.teacher_dim <= 0:
        raise ValueError(
            "model.teacher_dim is 0: build the tokenizer through the beats_tokenizer_training task (it reads it "
            "from model.teacher_path), or set model.teacher_dim, or model.estimator_layers=0 for inference only"
        )


@register_model("beats_tokenizer", dataclass=BeatsTokenizerConfig)
class BeatsTokenizerModel(BaseFairseqModel):
    is_tokenizer = True

    def __init__(self, cfg: BeatsTokenizerConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.frozen = False
        self.teacher = None  # plain attribute (not a submodule): not saved, not optimised
        self.backbone = BeatsBackbone(cfg)
        dim = cfg.encoder_embed_dim
        self.quantize_layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, cfg.quant_dim))
        self.quantize = NormEMAVectorQuantizer(
            cfg.codebook_size, cfg.quant_dim, beta=1.0, decay=cfg.quant_decay, eps=cfg.quant_eps,
            kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters, dead_code_threshold=cfg.dead_code_threshold,
            dead_code_interval=cfg.dead_code_interval,
        )
        self.estimator = Estimator(cfg) if cfg.estimator_layers > 0 else None

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    @property
    def codebook_size(self) -> int:
        """Number of distinct labels."""
        return self.cfg.codebook_size

    # ------------------------------------------------------------------ inference
    def train(self, mode: bool = True):
        """A frozen tokenizer (:meth:`freeze`) stays in eval mode, so its codebook never changes."""
        return super().train(mode and not self.frozen)

    def freeze(self):
        """No gradients and eval mode for good (labelling for pre-training)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def encode(self, source, padding_mask=None, fbank_mean=None, fbank_std=None):
        """(quantizer input ``(B, N, quant_dim)``, patch padding mask or None)."""
        x, padding_mask = self.backbone.extract_features(source, padding_mask, fbank_mean, fbank_std)
        return self.quantize_layer(x), padding_mask

    def extract_labels(self, source, padding_mask=None, fbank_mean=None, fbank_std=None) -> torch.Tensor:
        """Code indices ``(B, N)`` (long); padded patches get labels too (as officially).

        Runs without gradients and, for float32 weights, in float32 whatever the autocast state.
        Officially the result is flattened to ``(B*N,)``: ``labels.flatten()`` gives that order.
        """
        with torch.no_grad(), torch.autocast(device_type=source.device.type, enabled=False):
            z, _ = self.encode(source, padding_mask, fbank_mean, fbank_std)
            was_training = self.quantize.training
            self.quantize.eval()  # labelling never updates the codebook
            try:
                _, _, codes, _ = self.quantize(z)
            finally:
                self.quantize.train(was_training)
        return codes

    # ------------------------------------------------------------------ training
    def set_teacher(self, teacher) -> None:
        """Attach a :class:`beats_fairseq.tokenizers.teacher.Teacher` (its dim must equal ``teacher_dim``)."""
        if self.estimator is None:
            raise RuntimeError("this tokenizer has no estimator (estimator_layers=0): it cannot be trained")
        if teacher.dim != self.cfg.teacher_dim:
            raise ValueError(
                f"teacher {teacher.source!r} gives targets of size {teacher.dim} but model.teacher_dim="
                f"{self.cfg.teacher_dim}; set model.teacher_dim=0 to take it from the teacher"
            )
        self.teacher = teacher

    def forward(self, source, padding_mask=None, targets=None, **kwargs):
        """Tokenizer training step outputs (a dict of tensors; see the criterion).

        ``targets`` ``(B, N, teacher_dim)`` may be given; otherwise the attached teacher computes them.
        Keys: ``cosine`` ``(B, N)`` (estimator vs target), ``valid`` ``(B, N)`` bool, ``commitment``
        (scalar, mean over valid patches), ``codes`` ``(B, N)``, ``local_counts`` (per-code counts of
        this worker's valid patches), and the quantizer's ``counts`` (training: all workers),
        ``perplexity`` (of ``counts``) and ``usage`` (training: share of codes used in the last
        ``dead_code_interval`` updates).
        """
        if self.estimator is None:
            raise RuntimeError("this tokenizer has no estimator (estimator_layers=0), e.g. an official checkpoint: "
                               "use extract_labels, or train a tokenizer with estimator_layers > 0")
        z, patch_mask = self.encode(source, padding_mask)
        valid = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device) if patch_mask is None else ~patch_mask
        z_q, commitment, codes, stats = self.quantize(z, valid)
        estimate = self.estimator(z_q, patch_mask)
        if targets is None:
            if self.teacher is None:
                raise RuntimeError("no teacher attached: set model.teacher_path (the task loads it) or pass targets")
            targets, teacher_mask = self.teacher(source, padding_mask)
            if teacher_mask is not None and patch_mask is not None and not torch.equal(teacher_mask, patch_mask):
                raise RuntimeError("teacher and tokenizer patch padding masks differ: they need the same patch size")
        if targets.shape[:2] != estimate.shape[:2]:
            raise RuntimeError(
                f"teacher targets {tuple(targets.shape)} do not align with the tokenizer patches "
                f"{tuple(estimate.shape)}: teacher and tokenizer need the same input_patch_size"
            )
        cosine = F.cosine_similarity(estimate.float(), targets.float(), dim=-1)
        local_counts = torch.bincount(codes[valid], minlength=self.cfg.codebook_size)
        return dict(cosine=cosine, valid=valid, commitment=commitment, codes=codes, local_counts=local_counts, **stats)

    # ------------------------------------------------------------------ official format
    @classmethod
    def from_official(cls, state, source="official tokenizer checkpoint"):
        """Inference-only tokenizer (no estimator) from an official ``{'cfg', 'model'}`` dict."""
        cfg = state["cfg"]
        extra = {name: cfg.get(official, default) for official, name, default in OFFICIAL_CODEBOOK_FIELDS}
        model = cls(BeatsTokenizerConfig(**backbone_cfg_from_official(cfg, source), **extra, estimator_layers=0))
        sd = state["model"]
        own = {k: v for k, v in sd.items() if k.startswith(("quantize_layer.", "quantize."))}
        backbone = backbone_from_official({k: v for k, v in sd.items() if k not in own})
        # Dead-code bookkeeping is saved by this project (exact resume) but is no official key.
        bookkeeping = {k: v for k, v in model.state_dict().items() if k in PROJECT_ONLY_KEYS}
        load_strict(model, dict(backbone, **own, **bookkeeping), source)
        return model

    def to_official(self):
        """Official ``{'cfg', 'model'}`` dict (the estimator is dropped: the official format has none)."""
        cfg = {k: v for k, v in backbone_cfg_to_official(self.cfg).items() if not k.startswith("_")}
        ratio = cfg.pop("layer_wise_gradient_decay_ratio")
        if ratio != 1.0:
            logger.warning("layer_wise_gradient_decay_ratio=%s is not part of the official tokenizer cfg; dropped", ratio)
        cfg.update({official: getattr(self.cfg, name) for official, name, _ in OFFICIAL_CODEBOOK_FIELDS})
        sd = self.state_dict()
        model = backbone_to_official(sd)
        model.update({k: v for k, v in sd.items()
                      if k.startswith(("quantize_layer.", "quantize.")) and k not in PROJECT_ONLY_KEYS})
        return {"cfg": cfg, "model": model}
