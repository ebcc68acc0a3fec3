"""The BEATs backbone: fbank front end, patch embedding and Transformer encoder.

:class:`BeatsBackbone` is the official ``BEATs`` module without the fine-tuning
predictor; its parameter names are the official ones (``patch_embedding``,
``layer_norm``, ``post_extract_proj``, ``encoder.*``). Every model of this project holds
one under the attribute ``backbone``, so an official key ``k`` is ``backbone.k`` here
(see ``beats_fairseq/checkpoint.py``).
"""

from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass

from .dropout import Dropout
from .encoder import TransformerEncoder, init_encoder_weights
from .fbank import FBANK_MEAN, FBANK_STD, NUM_MEL_BINS, compute_fbank, padding_masks


# What a backbone field is (``metadata["group"]``); the field lists below are derived from it.
ARCHITECTURE = "architecture"  # the shape of the weights: taken from a pre-trained checkpoint
REGULARISATION = "regularisation"  # training-only settings: no effect in eval mode
NORMALISATION = "normalisation"  # fbank statistics: call arguments, not fields, of the official cfg


@dataclass
class BeatsBackboneConfig(FairseqDataclass):
    """Settings of :class:`BeatsBackbone`. Field names and meanings equal the official ``BEATsConfig``;
    the defaults are those of the released checkpoints (not the official code defaults)."""

    # architecture (fine-tuning takes these from the pre-trained checkpoint)
    input_patch_size: int = field(
        default=16, metadata={"help": "side of the square fbank patches (frames x mel bins)", "group": ARCHITECTURE})
    embed_dim: int = field(
        default=512, metadata={"help": "channels of the patch-embedding convolution", "group": ARCHITECTURE})
    conv_bias: bool = field(
        default=False, metadata={"help": "bias in the patch-embedding convolution", "group": ARCHITECTURE})
    encoder_layers: int = field(default=12, metadata={"help": "number of Transformer layers", "group": ARCHITECTURE})
    encoder_embed_dim: int = field(default=768, metadata={"help": "Transformer width", "group": ARCHITECTURE})
    encoder_ffn_embed_dim: int = field(
        default=3072, metadata={"help": "Transformer feed-forward width", "group": ARCHITECTURE})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads", "group": ARCHITECTURE})
    activation_fn: str = field(
        default="gelu", metadata={"help": "feed-forward activation (only 'gelu' is supported)", "group": ARCHITECTURE})
    layer_norm_first: bool = field(
        default=False,
        metadata={"help": "pre-LN; only False (post-LN) is supported, as in every release", "group": ARCHITECTURE},
    )
    deep_norm: bool = field(
        default=True, metadata={"help": "DeepNorm residual scaling alpha=(2*layers)**0.25", "group": ARCHITECTURE})
    # regularisation (training only)
    layer_wise_gradient_decay_ratio: float = field(
        default=1.0,
        metadata={"help": "gradient of layer k scaled by ratio**(layers-1-k), front end by ratio**layers (0.6 for "
                  "fine-tuning)", "group": REGULARISATION},
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout in the Transformer", "group": REGULARISATION})
    attention_dropout: float = field(
        default=0.1, metadata={"help": "dropout on attention weights", "group": REGULARISATION})
    activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout after the feed-forward activation", "group": REGULARISATION})
    encoder_layerdrop: float = field(
        default=0.0,
        metadata={"help": "probability of skipping a layer in training (LayerDrop)", "group": REGULARISATION},
    )
    dropout_input: float = field(
        default=0.0, metadata={"help": "dropout on the projected patch embeddings", "group": REGULARISATION})
    # positions (architecture)
    conv_pos: int = field(
        default=128, metadata={"help": "kernel of the convolutional positional embedding", "group": ARCHITECTURE})
    conv_pos_groups: int = field(
        default=16, metadata={"help": "groups of the convolutional positional embedding", "group": ARCHITECTURE})
    relative_position_embedding: bool = field(
        default=True, metadata={"help": "T5-style relative position bias", "group": ARCHITECTURE})
    num_buckets: int = field(default=320, metadata={"help": "relative-position buckets", "group": ARCHITECTURE})
    max_distance: int = field(
        default=800, metadata={"help": "largest distinguished relative distance", "group": ARCHITECTURE})
    gru_rel_pos: bool = field(
        default=True, metadata={"help": "gated relative position bias (WavLM)", "group": ARCHITECTURE})
    # input normalisation
    fbank_mean: float = field(
        default=FBANK_MEAN, metadata={"help": "fbank normalisation mean (AudioSet: 15.41663)", "group": NORMALISATION})
    fbank_std: float = field(
        default=FBANK_STD,
        metadata={"help": "fbank normalisation std; features are (x-mean)/(2*std)", "group": NORMALISATION},
    )


def backbone_fields(*groups: str) -> tuple:
    """Names of the backbone fields of the given groups (all fields without any), in declaration order."""
    own = [f for f in fields(BeatsBackboneConfig) if not f.name.startswith("_")]  # not fairseq's _name
    return tuple(f.name for f in own if not groups or f.metadata["group"] in groups)


BACKBONE_FIELDS = backbone_fields()
ARCH_FIELDS = backbone_fields(ARCHITECTURE)  # copied from the pre-trained checkpoint when fine-tuning
TRAINING_ONLY_FIELDS = backbone_fields(REGULARISATION)  # do not change the outputs in eval mode
OFFICIAL_BACKBONE_FIELDS = backbone_fields(ARCHITECTURE, REGULARISATION)  # the backbone fields of an official cfg


def check_supported(cfg) -> None:
    if cfg.layer_norm_first:
        raise ValueError("layer_norm_first=True (pre-LN) is not supported: every BEATs release is post-LN")
    if cfg.activation_fn != "gelu":
        raise ValueError(f"activation_fn={cfg.activation_fn!r} is not supported; use 'gelu'")


def transformer_stack(cfg, num_layers: int) -> TransformerEncoder:
    """A ``num_layers``-deep stack with the backbone's layer settings (``cfg``), without LayerDrop or
    gradient decay, officially initialised: the label predictor and the tokenizer estimator."""
    values = {name: getattr(cfg, name) for name in BACKBONE_FIELDS}
    values.update(encoder_layers=num_layers, encoder_layerdrop=0.0)
    stack = TransformerEncoder(SimpleNamespace(**values))
    init_encoder_weights(stack, cfg.deep_norm)
    return stack


class Frontend(NamedTuple):
    """What :meth:`BeatsBackbone.frontend` returns."""

    fbank: torch.Tensor  # (B, T, F) normalised log-mel frames
    embeddings: torch.Tensor  # (B, N, encoder_embed_dim) patch embeddings, the encoder's input
    padding_mask: Optional[torch.Tensor]  # (B, N) True = padded patch; None without a waveform mask


class BeatsBackbone(nn.Module):
    """Waveform -> fbank -> 16x16 patches -> Transformer features, as the official ``BEATs``."""

    def __init__(self, cfg: BeatsBackboneConfig):
        super().__init__()
        check_supported(cfg)
        self.cfg = cfg
        self.patch_size = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg, gradient_decay=cfg.layer_wise_gradient_decay_ratio)
        init_encoder_weights(self.encoder, cfg.deep_norm)

    @property
    def frequency_bands(self) -> int:
        """Patches per time step: the frequency bands of the patch grid (128 mel bins / patch size)."""
        return NUM_MEL_BINS // self.patch_size

    def fbank(self, source: torch.Tensor, fbank_mean=None, fbank_std=None) -> torch.Tensor:
        mean = self.cfg.fbank_mean if fbank_mean is None else fbank_mean
        std = self.cfg.fbank_std if fbank_std is None else fbank_std
        return compute_fbank(source, mean, std)

    def embed_patches(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank ``(B, T, F)`` -> patch features ``(B, N, embed_dim)`` after the patch LayerNorm."""
        x = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # time-major: n = t * (F // p) + f
        return self.layer_norm(x)

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        if self.post_extract_proj is not None:
            patches = self.post_extract_proj(patches)
        return self.dropout_input(patches)

    def frontend(self, source, padding_mask=None, fbank_mean=None, fbank_std=None, fbank_transform=None) -> Frontend:
        """Waveform ``(B, L)`` -> :class:`Frontend`: the fbank, the encoder inputs ``(B, N, C)`` and the
        patch padding mask (official two-stage rule, ``modules/fbank.py``).

        ``fbank_transform(fbank, frame_mask)`` (SpecAugment in fine-tuning) changes the fbank
        before the patch embedding; the returned fbank is the transformed one.
        """
        fbank = self.fbank(source, fbank_mean, fbank_std)
        frame_mask, patch_mask = padding_masks(padding_mask, fbank, self.patch_size)
        if fbank_transform is not None:
            fbank = fbank_transform(fbank, frame_mask)
        return Frontend(fbank, self.project(self.embed_patches(fbank)), patch_mask)

    def encode(self, x, padding_mask=None, positions=None, layer: Optional[int] = None):
        """Encoder inputs ``(B, N, C)`` -> (output, every layer's output), as ``TransformerEncoder``.

        ``positions`` ``(B, V)``: only those patches enter the encoder, at their true positions
        (masked pre-training); the output is then ``(B, V, C)``.
        """
        if positions is None:
            return self.encoder(x, padding_mask, layer=layer)
        index = positions.unsqueeze(-1).expand(-1, -1, x.size(-1))
        visible_padding = None if padding_mask is None else padding_mask.gather(1, positions)
        return self.encoder(x.gather(1, index), visible_padding, positions=positions, full_length=x.size(1),
                            layer=layer)

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        fbank_mean: Optional[float] = None,
        fbank_std: Optional[float] = None,
        layer: Optional[int] = None,
    ):
        """Official API: waveform ``(B, L)`` -> (features ``(B, N, C)``, patch padding mask or None).

        ``fbank_mean``/``fbank_std`` default to the config's; ``layer`` (0-based) returns that
        layer's output instead of the last one.
        """
        front = self.frontend(source, padding_mask, fbank_mean, fbank_std)
        x, _ = self.encode(front.embeddings, front.padding_mask, layer=layer)
        return x, front.padding_mask


# Defaults of the official ``BEATsConfig`` code (not of the released checkpoints): an official
# cfg dict that omits a field gets these from the official code, so a faithful import must too.
OFFICIAL_CODE_DEFAULTS = dict(
    input_patch_size=-1, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=1.0, layer_norm_first=False, deep_norm=False, dropout=0.1,
    attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
    conv_pos=128, conv_pos_groups=16, relative_position_embedding=False, num_buckets=320,
    max_distance=1280, gru_rel_pos=False,
)


def backbone_cfg_from_official(cfg: dict, source: str = "official cfg") -> dict:
    """Backbone fields of an official cfg dict, official-code defaults for absent ones."""
    out = {name: cfg.get(name, default) for name, default in OFFICIAL_CODE_DEFAULTS.items()}
    if out["input_patch_size"] <= 0:
        raise ValueError(f"{source}: input_patch_size is {out['input_patch_size']}; official checkpoints use 16")
    return out


def backbone_cfg_to_official(cfg) -> dict:
    """Official cfg fields of a backbone config (fbank statistics are call arguments officially)."""
    return {name: getattr(cfg, name) for name in OFFICIAL_BACKBONE_FIELDS}
