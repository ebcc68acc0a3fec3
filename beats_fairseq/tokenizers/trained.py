"""Trained acoustic tokenizers as frozen label generators (iter2+ pre-training)."""

import torch.nn as nn


class NotATokenizerError(ValueError):
    """The checkpoint given as a tokenizer holds another kind of model."""


def load_frozen_tokenizer(path: str, device: str = "cpu") -> nn.Module:
    """Load a tokenizer checkpoint (this project's ``beats_tokenizer`` or an official
    ``Tokenizer_*.pt``) as a frozen module in eval mode for good.

    The result has ``extract_labels(source, padding_mask=None) -> LongTensor (B, N)``; its
    parameters need no gradient, a parent's ``.train()`` leaves it in eval mode, and labelling
    never changes its codebook. Raises :class:`NotATokenizerError` naming ``path`` for any other
    checkpoint (pre-trained, fine-tuned, ...).
    """
    from ..checkpoint import load

    model = load(path, device=device)
    if not getattr(model, "is_tokenizer", False) or not hasattr(model, "extract_labels"):
        raise NotATokenizerError(
            f"{path!r} is not a tokenizer checkpoint (it holds a {type(model).__name__}); give a checkpoint "
            "written by the beats_tokenizer_training task or an official Tokenizer_*.pt"
        )
    if not model.quantize.initialised:
        raise NotATokenizerError(f"{path!r}: the tokenizer codebook was never initialised (no training step ran)")
    return model.freeze()
