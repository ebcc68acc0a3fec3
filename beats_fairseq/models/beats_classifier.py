"""``beats_classifier``: BEATs encoder + linear head on the mean over valid patches.

Logits are ``head(x_n)`` averaged over the valid patches n, which equals a linear head on
the mean-pooled output (paper section 3.3.3) and is exactly what the official fine-tuned
``extract_features`` computes before its sigmoid (``head_pooling: mean``).

``head_pooling: bands`` gives each of the 8 frequency bands of patches its own weights
(:class:`BandHead`): the clip logits are then a linear head on the per-band means over time,
concatenated (``modules/pooling.py``), so the head keeps where in the spectrum a feature is, which
the mean over all patches discards. ``head_pooling: band_stats`` reads the mean and the standard
deviation over time of every band (the clip feature of the probes' ``bands`` pooling): a linear layer
on ``2 * bands * C`` values, so the head also sees how each feature varies in time. It has no
per-patch logits. Neither head has an official layout.

Fine-tuning (task ``beats_audio_classification``):

* ``pretrained_path``: a ``beats``/``beats_encoder``/``beats_classifier`` checkpoint of this
  project or an official BEATs checkpoint. It is read only when the model is first built:
  the task copies its architecture fields into this config and loads its backbone weights
  strictly (``tasks/init_from.py``); a fine-tuned checkpoint then holds everything (reloading
  never reads it).
* ``class_names``/``class_mids``: the class map, stored in the config (``model.class_names``).
* Augmentations, in training mode only: roll and mixup on the waveform, SpecAugment on the
  normalised fbank, by the per-clip rule of ``beats_fairseq/seeding.py`` (``augment.py``).
* ``head_init: probe``: the head starts as the linear probe of the encoder's features of the training
  clips, fit before the first update (``tasks/head_from_probe.py``).
* ``freeze_encoder_updates``: the first N updates train the head alone on a frozen encoder (no
  gradient, no backward pass through it), then everything learns: on a few labels the head first
  fits features the fine-tuning then adapts, instead of random head gradients reshaping them.
* ``layer_decay``: layer-wise learning-rate decay through fairseq's ``composite`` optimizer
  (``p.optim_overrides``): head x1, layer k of L x ``decay**(L - k)``, front end x ``decay**(L+1)``.
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model

from .. import augment
from ..checkpoint import backbone_from_official, backbone_to_official, load_strict, rename
from ..modules.backbone import BeatsBackbone, BeatsBackboneConfig, backbone_cfg_from_official, backbone_cfg_to_official
from ..modules.dropout import Dropout
from ..modules.pooling import band_grid, head_logits

logger = logging.getLogger(__name__)


@dataclass
class BeatsClassifierConfig(BeatsBackboneConfig):
    # head
    num_classes: int = field(
        default=527, metadata={"help": "number of output classes (the task sets it from the class map; 0 = from it)"}
    )
    multilabel: bool = field(default=True, metadata={"help": "sigmoid outputs and BCE (multi-label); False: softmax"})
    predictor_dropout: float = field(default=0.0, metadata={"help": "dropout on the encoder output before the head"})
    head_pooling: str = field(
        default="mean",
        metadata={"help": "what the head reads: mean (of all patches, the official head), bands (the mean over time "
                  "of each frequency band of patches, each band with its own weights) or band_stats (the mean and "
                  "the std over time of each band, the probes' bands feature); bands and band_stats have no "
                  "official layout"},
    )
    head_init: str = field(
        default="random",
        metadata={"help": "how the head starts: random, or probe: before the first update of a fresh run, the "
                  "logistic-regression probe of the encoder's features of the training clips (linear probing, then "
                  "fine-tuning; head_pooling band_stats or mean; beats_fairseq/tasks/head_from_probe.py)"},
    )
    # initialisation and class map (written by the task)
    pretrained_path: Optional[str] = field(
        default=None,
        metadata={"help": "beats/beats_encoder checkpoint of this project or an official BEATs checkpoint to start "
                  "from; read only at the first build (empty: random initialisation)"},
    )
    class_names: Optional[List[str]] = field(
        default=None, metadata={"help": "display name of every class (written by the task from the class map)"}
    )
    class_mids: Optional[List[str]] = field(
        default=None, metadata={"help": "mid (AudioSet id) of every class (written by the task from the class map)"}
    )
    # optimisation
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "layer-wise LR decay: lr scale decay**(L-k) for layer k of L, decay**(L+1) for the front "
                  "end, 1 for the head; < 1 needs optimizer._name=beats_composite with dynamic_groups=true"},
    )
    decay_norms_and_biases: bool = field(
        default=False,
        metadata={"help": "apply the optimizer's weight decay to biases, norm weights and other 1-D parameters too "
                  "(false: they get none, as in BEiT/data2vec fine-tuning; needs optimizer._name=beats_composite "
                  "with dynamic_groups=true)"},
    )
    freeze_encoder_updates: int = field(
        default=0,
        metadata={"help": "the encoder (front end and layers) stays frozen for the first N updates: only the head "
                  "learns, then everything (linear probing, then fine-tuning); N >= max_update: the head alone "
                  "(frozen updates skip the encoder's backward pass); 0: never frozen"},
    )
    # augmentation (training mode only)
    specaug_time_ratio: float = field(
        default=0.0, metadata={"help": "SpecAugment: average share of fbank frames masked in training"}
    )
    specaug_freq_ratio: float = field(
        default=0.0, metadata={"help": "SpecAugment: average share of mel bins masked in training"}
    )
    specaug_num_masks: int = field(default=2, metadata={"help": "SpecAugment: masks per axis and clip"})
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "mixup of waveforms and targets, lam ~ Beta(alpha, alpha); 0 = off; "
                               "on: the loss is BCE also for single-label data"}
    )
    mixup_prob: float = field(default=1.0, metadata={"help": "share of training clips that get mixed (when on)"})
    roll: bool = field(default=False, metadata={"help": "roll augmentation: rotate waveforms by a random offset"})


HEAD_POOLINGS = ("mean", "bands", "band_stats")
HEAD_INITS = ("random", "probe")
PROBE_HEADS = ("band_stats", "mean")  # heads of one clip feature (modules/pooling.head_input): head_init=probe


class BandHead(nn.Module):
    """Per-patch logits with one weight matrix per frequency band: patch (t, b) of the time-major grid
    (``bands`` patches per time step) gets ``W_b x_tb + bias / bands``. Summed over the bands of the
    per-band means over time (:func:`clip_logits`), that is ``sum_b W_b mean_t(x_tb) + bias``: a linear
    head on the per-band means, concatenated."""

    def __init__(self, dim: int, num_classes: int, bands: int):
        super().__init__()
        self.bands = bands
        bound = 1.0 / (bands * dim) ** 0.5  # nn.Linear's initial range for the bands * dim inputs it equals
        self.weight = nn.Parameter(torch.empty(bands, num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid, _ = band_grid(x, None, self.bands)
        logits = torch.einsum("ntbc,bkc->ntbk", grid, self.weight) + self.bias / self.bands
        return logits.reshape(x.size(0), x.size(1), -1)


def layer_lr_scales(model: "BeatsClassifierModel", decay: float):
    """{parameter name: lr scale} for layer-wise LR decay (shared parameters listed once)."""
    num_layers = len(model.backbone.encoder.layers)
    scales = {}
    for name, _ in model.named_parameters():
        if name.startswith("head."):
            depth = num_layers + 1
        elif name.startswith("backbone.encoder.layers."):
            depth = int(name.split(".")[3]) + 1
        else:
            depth = 0
        scales[name] = decay ** (num_layers + 1 - depth)
    return scales


def optimizer_overrides(model: "BeatsClassifierModel", decay: float, decay_norms_and_biases: bool):
    """{parameter name: ``optim_overrides``} for ``beats_composite``: the layer-wise LR scale, and
    no weight decay on 1-D parameters (biases, norms) unless ``decay_norms_and_biases``."""
    out = {}
    scales = layer_lr_scales(model, decay)
    for name, param in model.named_parameters():
        optimizer = {}
        scale = scales[name]
        if scale != 1.0:
            optimizer["lr_scale"] = scale
        if param.dim() <= 1 and not decay_norms_and_biases:
            optimizer["weight_decay_scale"] = 0.0
        if optimizer:
            out[name] = {"optimizer": optimizer}
    return out


@register_model("beats_classifier", dataclass=BeatsClassifierConfig)
class BeatsClassifierModel(BaseFairseqModel):
    def __init__(self, cfg: BeatsClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BeatsBackbone(cfg)
        self.predictor_dropout = Dropout(cfg.predictor_dropout)
        if cfg.head_pooling not in HEAD_POOLINGS:
            raise ValueError(f"model.head_pooling={cfg.head_pooling!r}: choose one of {', '.join(HEAD_POOLINGS)}")
        head_init = getattr(cfg, "head_init", "random")
        if head_init not in HEAD_INITS:
            raise ValueError(f"model.head_init={head_init!r}: choose one of {', '.join(HEAD_INITS)}")
        if head_init == "probe" and cfg.head_pooling not in PROBE_HEADS:
            raise ValueError(f"model.head_init=probe needs model.head_pooling band_stats or mean, not "
                             f"{cfg.head_pooling!r}: the probe is a linear map of a clip feature, and a bands head "
                             "scores every patch")
        if cfg.head_pooling == "bands":
            self.head = BandHead(cfg.encoder_embed_dim, cfg.num_classes, self.backbone.frequency_bands)
        elif cfg.head_pooling == "band_stats":
            self.head = nn.Linear(2 * self.backbone.frequency_bands * cfg.encoder_embed_dim, cfg.num_classes)
        else:
            self.head = nn.Linear(cfg.encoder_embed_dim, cfg.num_classes)
        self.num_updates = 0
        self.seed = 1  # the task sets common.seed: augmentations are drawn per (seed, update, clip id)
        params = dict(self.named_parameters())
        for name, overrides in optimizer_overrides(self, cfg.layer_decay, cfg.decay_norms_and_biases).items():
            params[name].optim_overrides = overrides

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = int(num_updates)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    # ------------------------------------------------------------------ classes
    @property
    def class_names(self) -> Optional[List[str]]:
        names = getattr(self.cfg, "class_names", None)
        return [str(n) for n in names] if names else None

    @property
    def class_mids(self) -> Optional[List[str]]:
        mids = getattr(self.cfg, "class_mids", None)
        return [str(m) for m in mids] if mids else None

    @property
    def label_dict(self):
        """Official-style ``{index: mid}`` (mids, else names; or what was assigned), or None."""
        if self.__dict__.get("_label_dict") is not None:
            return self.__dict__["_label_dict"]
        labels = self.class_mids or self.class_names
        return None if labels is None else dict(enumerate(labels))

    @label_dict.setter
    def label_dict(self, value):
        self.__dict__["_label_dict"] = None if value is None else dict(value)

    # ------------------------------------------------------------------ forward
    def augment_random(self, source, clip_ids=None) -> augment.TorchRandom:
        """Per-clip random numbers (``seeding.py``) when the clip ids are known."""
        if clip_ids is None:
            return augment.TorchRandom(source.size(0), source.device)
        return augment.ClipRandom(self.seed, self.num_updates, clip_ids, source.device)

    def augment_waveform(self, source, padding_mask, target, rng=None):
        cfg = self.cfg
        if cfg.roll:
            source = augment.roll(source, padding_mask, rng)
        if target is not None and cfg.mixup_alpha > 0:
            if not target.is_floating_point():
                target = torch.nn.functional.one_hot(target, cfg.num_classes).float()
            source, padding_mask, target = augment.mixup(source, padding_mask, target, cfg.mixup_alpha,
                                                         cfg.mixup_prob, rng)
        return source, padding_mask, target

    @property
    def encoder_frozen(self) -> bool:
        """Training within the first ``freeze_encoder_updates`` updates: the encoder gets no gradient."""
        return self.training and self.num_updates < self.cfg.freeze_encoder_updates

    def encode(self, source, padding_mask=None, rng=None):
        """(encoder output ``(B, N, C)``, patch padding mask); SpecAugment in training mode."""
        cfg, transform = self.cfg, None
        if self.training:
            def transform(fbank, frame_mask):
                return augment.spec_augment(fbank, cfg.specaug_time_ratio, cfg.specaug_freq_ratio,
                                            cfg.specaug_num_masks, frame_mask, rng)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            front = self.backbone.frontend(source, padding_mask, fbank_transform=transform)
            x, _ = self.backbone.encode(front.embeddings, front.padding_mask)
        return x, front.padding_mask

    @property
    def has_patch_logits(self) -> bool:
        """Whether the head scores every patch (``mean``, ``bands``); a ``band_stats`` head scores the clip's band
        statistics only."""
        return self.cfg.head_pooling != "band_stats"

    def patch_logits(self, source, padding_mask=None, rng=None):
        """(per-patch logits ``(B, N, classes)``, patch padding mask or None)."""
        if not self.has_patch_logits:
            raise ValueError("a classifier with model.head_pooling=band_stats has no per-patch logits: its head reads "
                             "each band's mean and std over time (distil its features instead: "
                             "model.teacher_target=features)")
        x, padding_mask = self.encode(source, padding_mask, rng)
        return self.head(self.predictor_dropout(x)), padding_mask

    def forward(self, source, padding_mask=None, target=None, clip_ids=None, **kwargs):
        """Clip logits ``(B, classes)`` and the patch padding mask.

        With ``target`` (training through the criterion) a third value is returned: the
        targets after augmentation (mixup turns them into float ``(B, classes)`` rows).
        Augmentations only run in training mode; with ``clip_ids`` (``sample["id"]``, passed by
        the criterion) they follow the per-clip rule of ``seeding.py``.
        """
        rng = None
        if self.training:
            rng = self.augment_random(source, clip_ids)
            source, padding_mask, target = self.augment_waveform(source, padding_mask, target, rng)
        x, patch_mask = self.encode(source, padding_mask, rng)
        logits = head_logits(self.head, self.predictor_dropout(x), patch_mask, self.cfg.head_pooling,
                             self.backbone.frequency_bands)
        if target is None:
            return logits, patch_mask
        return logits, patch_mask, target

    def probabilities(self, logits):
        return torch.sigmoid(logits) if self.cfg.multilabel else torch.softmax(logits, dim=-1)

    def extract_features(self, source, padding_mask=None, **kwargs):
        """Official API: (probabilities ``(B, classes)``, patch padding mask or None)."""
        logits, padding_mask = self.forward(source, padding_mask)
        return self.probabilities(logits), padding_mask

    # ------------------------------------------------------------------ official format
    @classmethod
    def from_official(cls, state, source="official checkpoint"):
        cfg = state["cfg"]
        num_classes = cfg.get("predictor_class", 527)
        label_dict = state.get("label_dict") or None
        labels = None
        if label_dict is not None and all(i in label_dict for i in range(num_classes)):
            labels = [str(label_dict[i]) for i in range(num_classes)]
        elif label_dict is not None:
            logger.warning("%s: label_dict does not cover indices 0..%d; class names not set", source, num_classes - 1)
        model = cls(
            BeatsClassifierConfig(
                **backbone_cfg_from_official(cfg, source),
                num_classes=num_classes,
                predictor_dropout=cfg.get("predictor_dropout", 0.1),
                multilabel=True,
                class_names=labels,
                class_mids=labels,
            )
        )
        load_strict(model, rename(backbone_from_official(state["model"]), {"backbone.predictor.": "head."}), source)
        return model

    def to_official(self):
        if self.cfg.head_pooling != "mean":
            raise ValueError(f"a classifier with model.head_pooling={self.cfg.head_pooling} has no official layout: "
                             "official BEATs heads read the mean of all patches (fine-tune with model.head_pooling=mean for a "
                             "model to convert)")
        cfg = dict(
            backbone_cfg_to_official(self.cfg),
            finetuned_model=True,
            predictor_class=self.cfg.num_classes,
            predictor_dropout=self.cfg.predictor_dropout,
        )
        sd = self.state_dict()
        model = dict(backbone_to_official(sd), **rename({k: v for k, v in sd.items() if k.startswith("head.")}, {"head.": "predictor."}))
        return {"cfg": cfg, "model": model, "label_dict": self.label_dict}
