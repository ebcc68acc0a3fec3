"""Trained acoustic tokenizers as frozen label generators (iter2+ pre-training).

The ``beats_pretraining`` task loads ``model.tokenizer_path`` with
:func:`beats_fairseq.loading.load_frozen_tokenizer` when it builds a model for training and
attaches it as a :class:`FrozenTokenizer`; a model loaded from its checkpoint has none.
"""

import torch
import torch.nn as nn

from .teacher import follow_device


class NotATokenizerError(ValueError):
    """The checkpoint given as a tokenizer holds another kind of model."""


class FrozenTokenizer:
    """A frozen trained tokenizer kept outside the pre-training model's module tree.

    So it is never saved in the model's checkpoints, never seen by the optimizer or DDP, and
    never cast by ``common.bf16``/``fp16``: its labels are the float32 ones. It follows the
    input's device lazily.
    """

    def __init__(self, model: nn.Module, source: str = "tokenizer"):
        if not hasattr(model, "extract_labels"):
            raise NotATokenizerError(f"{source!r} holds a {type(model).__name__}, not a tokenizer")
        self.model = model
        self.source = source

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, padding_mask=None) -> torch.Tensor:
        """Waveforms ``(B, L)`` -> labels ``(B, N)`` (long)."""
        follow_device(self.model, source)
        return self.model.extract_labels(source, padding_mask)
