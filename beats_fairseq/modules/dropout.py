"""Dropout for the encoder and heads, with a cheap random mask on CPU.

On CPU ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, which fills the tensor
one element at a time from the CPU generator in a single thread: in a fine-tuning step of
BEATs-base (attention dropout on every ``(B, H, L, L)`` probability matrix) that serial draw is a
large share of the step on a few cores. Here each random 32-bit word of the generator
(``Tensor.random_``, the same generator, so ``torch.manual_seed`` still fixes the masks) gives
the masks of two elements: an element is dropped when the 15 random bits of its 16-bit half are
below ``round(p * 2**15)``, and the kept ones are scaled by the exact inverse of the kept share.
The drop probability is thus ``p`` rounded to a multiple of ``2**-15`` (0.1 -> 0.1000061); torch's
own CPU ``bernoulli_`` rounds it to ``2**-24``.

Other devices use ``F.dropout`` (their kernels draw the mask in parallel, fused with the
multiplication). :func:`attention_with_dropout` is the attention of a CPU training step with
attention dropout: CPU ``scaled_dot_product_attention`` has no fused kernel with dropout, and its
fallback draws the mask with ``bernoulli_`` and adds safe-softmax passes.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

LEVELS = 2**15  # random 15-bit numbers: two per random word


def keep_mask(shape, p: float, device) -> torch.Tensor:
    """Float tensor of ``shape``: 0 with probability ``q = round(p * 2**15) / 2**15``, else ``1 / (1 - q)``."""
    threshold = round(p * LEVELS)
    count = math.prod(shape)
    # random_() fills int32 with 31 random bits: bits 0-14 and 16-30 are two random 15-bit numbers
    words = torch.empty((count + 1) // 2, dtype=torch.int32, device=device).random_()
    halves = words.bitwise_and_(LEVELS - 1 + (LEVELS - 1) * 2**16).view(torch.int16)[:count]
    # float compare and scale in place: much faster on CPU than going through a bool tensor
    return halves.float().view(shape).ge_(threshold).mul_(LEVELS / (LEVELS - threshold))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``; on CPU with the mask of :func:`keep_mask` (autograd keeps only the mask)."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    return x * keep_mask(x.shape, p, x.device).to(x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` through :func:`dropout` (no parameters: state dicts are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_with_dropout(q, k, v, mask: Optional[torch.Tensor], p: float) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask)`` with dropout ``p``, times ``v``: what
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)`` computes, for a CPU
    training step. q, k, v ``(B, H, L, D)``; mask broadcastable to ``(B, H, L, L)`` or None.

    The mask is added inside the ``q k^T`` product (``baddbmm``) and the softmax is plain (a row of
    only ``-inf`` cannot occur: padding never covers a whole clip).
    """
    batch, heads, length, width = q.shape
    flat = (batch * heads, length, width)
    q, k, v = q.reshape(flat), k.reshape(flat), v.reshape(flat)
    if mask is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(1.0 / math.sqrt(width))
    else:
        mask = mask.expand(batch, heads, length, length).reshape(batch * heads, length, length)
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(width))
    probs = dropout(torch.softmax(scores, dim=-1), p)
    return torch.bmm(probs, v).view(batch, heads, length, width)
