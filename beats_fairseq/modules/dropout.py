"""Dropout for the encoder and heads, and the attention of a CPU training step, with cheap masks.

On CPU ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, which fills the tensor
one element at a time from the CPU generator in a single thread: in a fine-tuning step of
BEATs-base (attention dropout on every ``(B, H, L, L)`` probability matrix) that serial draw is a
large share of the step on a few cores. Here the mask of a tensor takes one 64-bit number from
torch's CPU generator (so ``torch.manual_seed`` still fixes every mask) and seeds numpy's PCG64
bit generator with it, whose raw 64-bit output (several times faster per bit than torch's
Mersenne Twister) gives a random 16-bit number per element: an element is dropped when its
number is among the lowest ``round(p * 2**16)`` of the 65536, and the kept ones are scaled by
the exact inverse of the kept share. The drop probability is thus ``p`` rounded to a multiple
of ``2**-16`` (0.1 -> 0.1000061); torch's own CPU ``bernoulli_`` rounds it to ``2**-24``.

Other devices use ``F.dropout`` (their kernels draw the mask in parallel, fused with the
multiplication). :func:`attention_with_dropout` is the attention of a CPU training step with
attention dropout (CPU ``scaled_dot_product_attention`` has no fused kernel with dropout, and its
fallback draws the mask with ``bernoulli_``): one autograd node whose forward and backward work in
place on the ``(B * H, L, L)`` scores (the allocation of each fresh ``(B, H, L, L)`` tensor costs
page faults on CPU) and keep only the probabilities and the dropped probabilities for backward.
"""

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LEVELS = 2**16  # a random 16-bit number per element
SMALLEST = -(2**15)  # the int16 view of the random words: numbers from -32768 to 32767


def random_int16(count: int) -> torch.Tensor:
    """``count`` uniform random int16 numbers on CPU, from a PCG64 stream seeded by torch's CPU generator."""
    seed = int(torch.empty((), dtype=torch.int64).random_())
    words = np.random.PCG64(seed).random_raw((count + 3) // 4)  # uint64: four 16-bit numbers each
    return torch.from_numpy(words.view(np.int16)[:count])


def kept(shape, p: float):
    """(float tensor of ``shape``: 0 with probability ``q = round(p * 2**16) / 2**16``, else 1; ``1 / (1 - q)``),
    on CPU: the unscaled keep mask and the scale of the kept elements."""
    dropped = round(p * LEVELS)
    # float compare in place: much faster on CPU than going through a bool tensor
    mask = random_int16(math.prod(shape)).float().view(shape).ge_(SMALLEST + dropped)
    return mask, LEVELS / (LEVELS - dropped)


def keep_mask(shape, p: float, device) -> torch.Tensor:
    """Float tensor of ``shape``: 0 with probability ``q = round(p * 2**16) / 2**16``, else ``1 / (1 - q)``."""
    mask, scale = kept(shape, p)
    return mask.mul_(scale).to(device)


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


def attention_with_dropout(q, k, v, p: float, bias=None, gate=None, pad=None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D) + gate * bias + pad)`` with dropout ``p`` on the probabilities, times
    ``v``: what ``F.scaled_dot_product_attention(q, k, v, attn_mask=gate * bias + pad, dropout_p=p)``
    computes, for a CPU training step.

    q, k, v ``(B, H, L, D)``, any strides; bias ``(B | 1, H, L, L)`` or None; gate ``(B, H, L, 1)``
    (multiplies bias) or None; pad: an additive float mask broadcastable to ``(B, H, L, L)`` (the
    key padding ``-inf``; no gradient) or None. A row of only ``-inf`` cannot occur: padding never
    covers a whole clip. Under CPU autocast it runs in float32 and returns float32.
    """
    if gate is not None and bias is None:
        raise ValueError("attention_with_dropout: a gate needs a bias")
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            floats = [None if t is None else t.float() for t in (q, k, v, bias, gate, pad)]
            return attention_with_dropout(*floats[:3], p, *floats[3:])
    return _DroppedAttention.apply(q, k, v, bias, gate, pad, p)


class _DroppedAttention(torch.autograd.Function):
    """The autograd node of :func:`attention_with_dropout`.

    Forward: ``s = (q / sqrt(D)) k^T``; in place ``s += gate * bias + pad``, ``y = softmax(s)``;
    ``z = y * keep`` (keep 0 or 1); ``out = c z v`` with ``c = 1 / (1 - q)``. Backward from
    ``g = d out``: ``dz = c g v^T``, ``dv = z^T c g``, and the softmax backward through the dropout
    in place, ``ds = dz * z - y * sum_k(dz * z)`` (since ``y * keep * dz = z * dz``), so the keep
    mask itself is not kept.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, gate, pad, p):
        batch, heads, length, width = q.shape
        flat = batch * heads
        # one pass: the (B * H, L, D) layout for bmm and the 1 / sqrt(D) scale
        scaled_q = torch.mul(q, 1.0 / math.sqrt(width), out=q.new_empty(q.shape)).view(flat, length, width)
        k_flat = k.reshape(flat, k.shape[2], width)
        v_flat = v.reshape(flat, v.shape[2], v.shape[3])
        scores = torch.bmm(scaled_q, k_flat.transpose(1, 2))
        grid = scores.view(batch, heads, length, -1)
        if gate is not None:
            grid.addcmul_(gate, bias)
        elif bias is not None:
            grid.add_(bias)
        if pad is not None:
            grid.add_(pad)
        probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # in place
        # the kept probabilities stay unscaled: the scale of the kept ones goes on the (B * H, L, D) output
        dropped, ctx.keep_scale = probs, 1.0
        if p > 0.0:
            mask, ctx.keep_scale = kept(scores.shape, p)
            dropped = mask.to(scores.dtype).mul_(probs)
        ctx.save_for_backward(scaled_q, k_flat, v_flat, probs, dropped, bias, gate)
        ctx.width_scale = 1.0 / math.sqrt(width)
        out = torch.bmm(dropped, v_flat)
        return (out.mul_(ctx.keep_scale) if p > 0.0 else out).view(batch, heads, length, -1)

    @staticmethod
    def backward(ctx, grad_out):
        scaled_q, k_flat, v_flat, probs, dropped, bias, gate = ctx.saved_tensors
        batch, heads, length = grad_out.shape[:3]
        # one pass: the (B * H, L, D) layout of the gradient with the keep scale (dz = grad v^T)
        grad = torch.mul(grad_out, ctx.keep_scale, out=grad_out.new_empty(grad_out.shape)).view(v_flat.shape)
        grad_q = grad_k = grad_v = grad_bias = grad_gate = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.bmm(dropped.transpose(1, 2), grad).view(batch, heads, *v_flat.shape[1:])
        scores = torch.bmm(grad, v_flat.transpose(1, 2)).mul_(dropped)  # dz * z
        scores.addcmul_(probs, scores.sum(-1, keepdim=True), value=-1.0)  # ds, in place
        if ctx.needs_input_grad[0]:
            grad_q = torch.bmm(scores, k_flat).mul_(ctx.width_scale).view(batch, heads, length, -1)
        if ctx.needs_input_grad[1]:
            grad_k = torch.bmm(scores.transpose(1, 2), scaled_q).view(batch, heads, *k_flat.shape[1:])
        grid = scores.view(batch, heads, length, -1)
        if ctx.needs_input_grad[3]:
            if gate is None:
                grad_bias = grid if bias.shape[0] == batch else grid.sum(0, keepdim=True)
            elif bias.shape[0] == batch:
                grad_bias = grid * gate
            else:  # one bias for all clips: sum over them without a (B, H, L, L) temporary
                grad_bias = torch.mul(grid[0], gate[0])
                for clip in range(1, batch):
                    grad_bias.addcmul_(grid[clip], gate[clip])
                grad_bias = grad_bias.unsqueeze(0)
        if ctx.needs_input_grad[4]:
            grad_gate = grid.mul_(bias).sum(-1, keepdim=True)  # ds is no longer needed: in place
        return grad_q, grad_k, grad_v, grad_bias, grad_gate, None, None
