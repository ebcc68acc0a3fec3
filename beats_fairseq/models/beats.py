"""``beats``: masked audio modelling (paper sections 3.2.1 and 3.3.2).

Per update: waveform -> fbank -> patch embeddings; discrete labels for every patch from
the acoustic tokenizer (iter1: frozen random projection; iter2+: a trained tokenizer
named by ``tokenizer_path``, attached by the task for training only; or labels precomputed
to disk, passed in the batch);
``mask_prob`` (75%) of the patches are masked at random and **only the visible patches
enter the encoder**. They keep their true positions: the relative position bias is
computed from the patches' indices in the full sequence, and the convolutional
positional embedding runs over the full-length sequence with the visible patches in
place and zeros elsewhere (see ``modules/encoder.py``). The encoder output is scattered
back to full length with zero vectors at the masked positions, a small Transformer
label predictor (same layer type) runs over it, and a linear layer gives logits over
the codebook at the masked, non-padded positions.

Masks are drawn **per clip**, from (``mask_seed`` = ``common.seed``, update, clip id): the
per-clip rule of ``beats_fairseq/seeding.py`` (same masks for any sharding and after a resume;
fixed masks in eval mode).

Several masked views (``num_masks`` = K > 1, as data2vec 2.0 and EAT do): the fbank, the
patch embedding and the labels are computed once per clip; the encoder and the predictor
run on ``B * K`` rows (row ``b * K + k`` is view ``k`` of clip ``b``) and the loss covers the
masked patches of every view. View 0 draws exactly the K = 1 mask; view ``k > 0`` draws from
(``mask_seed``, update, clip id, ``k``), so the views differ and follow the same rule.
"""

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model

from ..checkpoint import backbone_to_official
from ..modules.backbone import BeatsBackbone, BeatsBackboneConfig, backbone_cfg_to_official, transformer_stack
from ..seeding import derived_seed
from ..tokenizers.random_projection import RandomProjectionTokenizer
from ..tokenizers.trained import FrozenTokenizer

logger = logging.getLogger(__name__)


@dataclass
class BeatsConfig(BeatsBackboneConfig):
    # masking
    mask_prob: float = field(default=0.75, metadata={"help": "share of patches masked (hidden from the encoder)"})
    num_masks: int = field(
        default=1,
        metadata={"help": "masked views of every clip per update (K): one fbank, patch embedding and set of "
                  "labels per clip, encoder and predictor on B*K views, loss over the masked patches of all; "
                  "1 is plain BEATs"},
    )
    # encoder and label predictor
    attention_backend: str = field(
        default="sdpa",
        metadata={"help": "attention of the encoder and predictor: 'sdpa' (scaled_dot_product_attention with "
                  "the gated bias as a float mask) or 'flex' (flex_attention, bias applied by a score_mod; "
                  "needs attention_dropout=0)"},
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile every Transformer layer of the encoder and predictor"}
    )
    label_predictor_layers: int = field(default=3, metadata={"help": "Transformer layers of the label predictor"})
    # start (read by the beats_pretraining task when a run starts: tasks/init_from.py)
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "start from this model instead of random weights: an official BEATs checkpoint "
                  "(pre-trained or fine-tuned) or a beats/beats_encoder/beats_classifier checkpoint of this project. "
                  "Its architecture replaces the config's; its backbone loads strictly, its label predictor and head "
                  "too when it is a beats checkpoint with the same codebook size. A relaunch resumes from "
                  "checkpoint_last.pt; empty: random initialisation"},
    )
    # tokenizer (iter1: the random projection below; iter2+: tokenizer_path)
    tokenizer_path: Optional[str] = field(
        default=None,
        metadata={"help": "trained tokenizer checkpoint (iter2+; this project's or official); "
                  "empty: the iter1 random-projection tokenizer"},
    )
    codebook_size: int = field(
        default=1024,
        metadata={"help": "number of codes K of the labels: of the random-projection tokenizer (iter1); with "
                  "tokenizer_path, written by the task from the trained tokenizer (kept in the checkpoint config)"},
    )
    codebook_dim: int = field(default=256, metadata={"help": "random-projection tokenizer: projection dimension"})
    tokenizer_seed: int = field(default=1337, metadata={"help": "random-projection tokenizer: seed of W and the codebook"})


class PatchMask(NamedTuple):
    """The masking of one update, from :meth:`BeatsModel.sample_mask`; one row per view
    (``B * num_masks`` rows, view ``k`` of clip ``b`` at row ``b * num_masks + k``)."""

    visible: torch.Tensor  # (R, V) sorted indices of the patches the encoder sees
    masked: torch.Tensor  # (R, N) bool: the masked, non-padded patches (their labels are predicted)
    padding: Optional[torch.Tensor]  # (R, N) bool patch padding, None without padding


@register_model("beats", dataclass=BeatsConfig)
class BeatsModel(BaseFairseqModel):
    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        if cfg.num_masks < 1:
            raise ValueError(f"model.num_masks={cfg.num_masks}: must be 1 (one mask per clip) or more")
        self.cfg = cfg
        self.backbone = BeatsBackbone(cfg)
        self.label_predictor = transformer_stack(cfg, cfg.label_predictor_layers)
        for stack in (self.backbone.encoder, self.label_predictor):
            stack.set_attention_backend(cfg.attention_backend)
            if cfg.torch_compile:
                stack.compile_layers()
        # iter1: the random-projection tokenizer, saved with the model. iter2+: a trained tokenizer
        # (``tokenizer_path``) that the task attaches for training (set_tokenizer); never saved here.
        self.tokenizer = None if cfg.tokenizer_path else RandomProjectionTokenizer(
            cfg.codebook_size, cfg.codebook_dim, cfg.input_patch_size, cfg.tokenizer_seed
        )
        self.frozen_tokenizer: Optional[FrozenTokenizer] = None
        self.label_head = nn.Linear(cfg.encoder_embed_dim, cfg.codebook_size)
        self.num_updates = 0
        self.mask_seed = 1  # the task sets common.seed

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    @property
    def num_codes(self) -> int:
        return self.label_head.out_features

    def set_tokenizer(self, tokenizer: FrozenTokenizer) -> None:
        """Attach the frozen trained tokenizer of ``tokenizer_path`` (done by the ``beats_pretraining`` task)."""
        if self.tokenizer is not None:
            raise RuntimeError("model.tokenizer_path is empty: this model labels with its random-projection tokenizer")
        if tokenizer.codebook_size != self.num_codes:
            raise ValueError(f"tokenizer {tokenizer.source!r} has {tokenizer.codebook_size} codes but "
                             f"model.codebook_size={self.num_codes}")
        self.frozen_tokenizer = tokenizer

    @torch.no_grad()
    def compute_labels(self, source, padding_mask, fbank):
        if self.tokenizer is not None:
            return self.tokenizer.labels_from_fbank(fbank)
        if self.frozen_tokenizer is None:
            raise RuntimeError(
                f"no tokenizer attached for model.tokenizer_path={self.cfg.tokenizer_path!r}: build the model for "
                "training through the beats_pretraining task (it loads the tokenizer), or pass precomputed labels"
            )
        return self.frozen_tokenizer(source, padding_mask)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = int(num_updates)

    def set_seed(self, seed: int) -> None:
        self.mask_seed = int(seed)

    def clip_noise(self, clip_ids, length: int, device, views: int = 1) -> torch.Tensor:
        """``(B * views, length)`` uniform noise by the per-clip rule (``seeding.py``): row
        ``b * views + k`` from (mask_seed, update, clip id, view k), view 0 that of a single-mask update."""
        step = self.num_updates if self.training else -1
        noise = torch.empty(clip_ids.numel() * views, length)
        generator = torch.Generator()  # re-seeded per row: the values of a fresh generator, made once
        for row, (clip, view) in enumerate((c, v) for c in clip_ids.tolist() for v in range(views)):
            # 0x6D61736B: "mask"; view 0 keeps the single-mask seed
            entropy = (self.mask_seed % 2**32, step + 1, clip, 0x6D61736B) + ((view,) if view else ())
            generator.manual_seed(derived_seed(*entropy))
            torch.rand(length, generator=generator, out=noise[row])
        return noise.to(device)

    def sample_visible(self, padding_mask, batch: int, length: int, device, clip_ids=None, views: int = 1):
        """Indices ``(B * views, V)`` (sorted) of the visible patches; padded patches are masked first.

        ``padding_mask`` has one row per returned row; ``clip_ids``: :meth:`clip_noise`, else
        torch's global generator.
        """
        num_visible = max(1, int(round(length * (1.0 - self.cfg.mask_prob))))
        if clip_ids is not None:
            noise = self.clip_noise(clip_ids, length, device, views)
        else:
            noise = torch.rand(batch * views, length, device=device)
        if padding_mask is not None:
            noise = noise.masked_fill(padding_mask, 2.0)
        return noise.argsort(dim=1)[:, :num_visible].sort(dim=1).values

    def sample_mask(self, padding_mask, batch: int, length: int, device, clip_ids=None, views: int = 1) -> PatchMask:
        """The :class:`PatchMask` of ``batch * views`` rows (``padding_mask``: one row per returned row)."""
        visible = self.sample_visible(padding_mask, batch, length, device, clip_ids, views)
        masked = torch.ones(visible.size(0), length, dtype=torch.bool, device=device).scatter(1, visible, False)
        if padding_mask is not None:
            masked &= ~padding_mask
        return PatchMask(visible, masked, padding_mask)

    def forward(self, source, padding_mask=None, target=None, clip_ids=None, **kwargs):
        """Returns logits at the masked valid patches, their labels, and all labels (for usage stats).

        ``clip_ids`` ``(B,)``: dataset indices of the clips, for per-clip masks (``seeding.py``). The
        steps: front end, labels, one mask per view, encoder on the visible patches, label
        predictor on the full sequence (zeros at the masked patches), logits at the masked ones.
        """
        front = self.backbone.frontend(source, padding_mask)
        batch, length, _ = front.embeddings.shape
        labels = target if target is not None else self.compute_labels(source, padding_mask, front.fbank)
        if labels.shape != (batch, length):
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {(batch, length)} patches")

        # one row per masked view; the front end and the labels ran once per clip
        views = self.cfg.num_masks
        x, padding, view_labels = (t if t is None or views == 1 else t.repeat_interleave(views, dim=0)
                                   for t in (front.embeddings, front.padding_mask, labels))
        mask = self.sample_mask(padding, batch, length, x.device, clip_ids, views)
        encoded, _ = self.backbone.encode(x, padding, positions=mask.visible)  # the visible patches only
        index = mask.visible.unsqueeze(-1).expand(-1, -1, encoded.size(-1))
        full = encoded.new_zeros(x.size(0), length, encoded.size(-1)).scatter(1, index, encoded)  # zeros: masked
        predicted, _ = self.label_predictor(full, padding)
        predict = mask.masked & (view_labels >= 0)  # precomputed labels are -1 where the clip alone has no patch
        labelled = labels >= 0
        if front.padding_mask is not None:
            labelled &= ~front.padding_mask
        return {
            "logits": self.label_head(predicted[predict]),
            "targets": view_labels[predict],
            "labels": labels[labelled],  # once per clip, whatever num_masks is (code usage statistics)
            "num_codes": self.num_codes,
        }

    def extract_features(self, source, padding_mask=None, **kwargs):
        """Unmasked encoder features, as the official ``BEATs.extract_features``."""
        return self.backbone.extract_features(source, padding_mask, **kwargs)

    def to_official(self):
        """The encoder in the official pre-trained format (the label predictor is not part of it)."""
        cfg = dict(backbone_cfg_to_official(self.cfg), finetuned_model=False)
        return {"cfg": cfg, "model": backbone_to_official(self.state_dict())}
