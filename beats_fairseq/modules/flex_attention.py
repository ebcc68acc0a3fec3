"""Gated relative-bias attention through ``torch.nn.attention.flex_attention``.

The SDPA path (``encoder.MultiheadAttention``) hands the kernel a float mask
``gate * bias (+ -inf at padded keys)`` of shape ``(B, H, L, L)``, built in memory per layer.
Here the same scores are made inside the kernel by a ``score_mod``: the relative bias is
looked up per (query, key) from a ``(H, 2 * span - 1)`` table indexed by
``positions[key] - positions[query]`` (the bucket of each relative distance computed once per
forward), multiplied by the per-query gate, and padded keys get ``-inf``. Nothing of size
``L x L`` is stored. Same maths as the SDPA path (forward tested on CPU; gradients checked
by ``benchmarks/gpu_check.sh`` on CUDA: torch has no flex backward on CPU); no attention dropout.

On CUDA the kernel is ``torch.compile``-d once (dynamic shapes); elsewhere flex attention
runs eagerly (a reference implementation: correct, not fast).
"""

import torch

_COMPILED = {}


def _kernel(device: torch.device):
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _COMPILED:
        _COMPILED["cuda"] = torch.compile(flex_attention, dynamic=True)
    return _COMPILED["cuda"]


class RelativeBiasTable:
    """Per-forward relative bias of the flex path: a ``(H, 2 * span - 1)`` table and positions ``(B|1, L)``."""

    def __init__(self, attention, positions: torch.Tensor, bucket):
        """``bucket``: ``encoder.relative_position_bucket`` (passed in: the encoder imports this module)."""
        span = int(positions.max().item()) + 1
        relative = torch.arange(-(span - 1), span, device=positions.device)
        buckets = bucket(relative, attention.num_buckets, attention.max_distance)
        self.table = attention.relative_attention_bias(buckets).t().contiguous()  # (H, 2 * span - 1)
        self.offset = span - 1
        self.positions = positions


def flex_gated_attention(q, k, v, bias: RelativeBiasTable, gate=None, key_padding_mask=None):
    """q, k, v ``(B, H, L, D)``; gate ``(B, H, L, 1)`` or None; key_padding_mask ``(B, L)`` bool."""
    batch, _, length, _ = q.shape
    table, offset = bias.table.to(q.dtype), bias.offset
    positions = bias.positions.expand(batch, length)
    gate = gate.squeeze(-1) if gate is not None else None

    def score_mod(score, b, h, q_idx, kv_idx):
        value = table[h, positions[b, kv_idx] - positions[b, q_idx] + offset]
        if gate is not None:
            value = gate[b, h, q_idx] * value
        score = score + value
        if key_padding_mask is not None:
            score = torch.where(key_padding_mask[b, kv_idx], float("-inf"), score)
        return score

    return _kernel(q.device)(q, k, v, score_mod=score_mod)
