"""The BEATs Transformer encoder (official ``backbone.TransformerEncoder``), re-implemented.

Post-LN layers with DeepNorm residual scaling, a weight-normed grouped convolutional
positional embedding, T5-style relative-position buckets shared by all layers, the
WavLM gated relative position bias, layer-wise gradient decay and LayerDrop. Parameter
names equal the official ones, so official state dicts load without renaming.

Attention runs through ``F.scaled_dot_product_attention`` with the gated bias (and the
key padding mask) as one float mask. The official "q / 32, subtract the row max, x 32"
trick is a numerical-range device that cancels inside the softmax, so it is omitted.

Positions: ``forward`` takes optional ``positions (B, L)``, the index of every input
token in the full patch sequence. Masked pre-training feeds only the visible patches;
with ``positions`` they keep their true positions: the relative bias uses
``positions[k] - positions[q]`` and the conv positional embedding is computed on the
full-length sequence (visible patches scattered to their places, zeros elsewhere) and
gathered back. Without ``positions`` the sequence is taken as contiguous, as officially.

Training on CPU with attention dropout runs :func:`dropout.attention_with_dropout` instead of
SDPA (whose CPU kernels have no dropout; its fallback draws the mask one element at a time), and
every dropout of the encoder is :class:`dropout.Dropout` (the same, cheaper mask on CPU).

Attention backends (:meth:`TransformerEncoder.set_attention_backend`): ``sdpa`` (default, as
above) or ``flex``: ``torch.nn.attention.flex_attention`` with a ``score_mod`` that applies the
gated bias without a ``(B, H, L, L)`` mask (``flex_attention.py``; no attention dropout).

Speed (see ``benchmarks/encoder_mfu.py``): the relative bias is made contiguous once per
forward; each layer writes its gated mask (``gate * bias`` plus the padding ``-inf``) with a
single fused ``addcmul``/``mul``, and without autograd into one buffer shared by all layers
(fresh 4-D allocations cost page faults on CPU). The gate is computed from the projection
output without transposed copies, and the residual ``x * alpha + y`` is one ``add``.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import Dropout, attention_with_dropout
from .flex_attention import RelativeBiasTable, flex_gated_attention

ATTENTION_BACKENDS = ("sdpa", "flex")


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int):
    """Bidirectional T5 buckets: half the buckets per sign, exact below num_buckets/4, log above."""
    num_buckets = num_buckets // 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def fft_grouped_conv1d(x, weight, bias, padding: int, groups: int):
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` computed in the frequency domain.

    x ``(B, C, L)``, weight ``(O, C / groups, K)``. Both are zero-padded to a power of two
    ``>= L + K - 1`` and transformed in float32 (float64 inputs stay float64); per group and
    frequency the channels mix by one complex matrix product; the inverse transform is cut to the
    convolution's output. On a GPU this
    is several times faster than cuDNN's grouped kernels for the positional convolution's long
    kernel (128 taps, 16 groups: ``benchmarks/pos_conv.py``), and under bf16 autocast it is also
    more accurate, being computed in float32. Returns x's dtype.
    """
    batch, channels, length = x.shape
    out_channels, per_group, kernel = weight.shape
    out_length = length + 2 * padding - kernel + 1
    n = 1 << (length + kernel - 2).bit_length()  # the smallest power of two >= length + kernel - 1
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        spectrum = torch.fft.rfft(x.to(dtype), n=n).view(batch, groups, per_group, -1)
        # the convolution layers compute a cross-correlation: transform the reversed kernel
        kernel_spectrum = torch.fft.rfft(weight.to(dtype).flip(-1), n=n).view(groups, out_channels // groups, per_group, -1)
        mixed = torch.einsum("bgif,goif->bgof", spectrum, kernel_spectrum).reshape(batch, out_channels, -1)
        start = kernel - 1 - padding
        out = torch.fft.irfft(mixed, n=n)[..., start:start + out_length] + bias.to(dtype)[:, None]
    return out.to(x.dtype)


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over dim 2 (``weight_g (1, 1, K)``, ``weight_v``).

    Same parameters and maths as ``torch.nn.utils.weight_norm(conv, dim=2)`` (the official
    layout), without the deprecated hook.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        std = math.sqrt(4.0 / (kernel_size * channels))
        weight_v = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_g = nn.Parameter(weight_v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight_v)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        """x ``(B, C, L)`` -> ``(B, C, L + 1 - kernel_size % 2)``.

        On CUDA the convolution runs in the frequency domain (:func:`fft_grouped_conv1d`).

        On CPU the convolution runs as a 1 x K conv2d in channels-last layout: oneDNN's NHWC
        grouped kernel is much faster than the NCW one here, and the encoder's ``(B, L, C)``
        activations already are channels-last, so neither the input nor the output (whose
        memory is ``(B, L, C)``) is copied.
        """
        if x.device.type == "cuda":
            return fft_grouped_conv1d(x, self.normalised_weight(), self.bias, self.padding, self.groups)
        if x.device.type != "cpu":
            return F.conv1d(x, self.normalised_weight(), self.bias, padding=self.padding, groups=self.groups)
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 grouped convolution is wrong on CPUs with AMX for kernels >= 16 (torch 2.11:
            # relative error ~1; tests/test_precision.py): compute it in float32, return the input's dtype
            with torch.autocast("cpu", enabled=False):
                return self.channels_last_conv(x.float(), self.normalised_weight().float(), self.bias.float()).to(x.dtype)
        return self.channels_last_conv(x, self.normalised_weight(), self.bias)

    def normalised_weight(self) -> torch.Tensor:
        """``g * v / ||v||`` (norms over dims 0 and 1), the convolution's weight."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def channels_last_conv(self, x, weight, bias):
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # a view when x is (B, L, C)^T
        weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(x, weight, bias, padding=(0, self.padding), groups=self.groups)
        return out.squeeze(2)


class SamePad(nn.Module):
    """Drops the last output step of an even-kernel convolution so lengths match."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : -self.remove] if self.remove else x


class MultiheadAttention(nn.Module):
    """Self-attention with the gated relative position bias (``gru_rel_pos``)."""

    def __init__(self, embed_dim, num_heads, dropout, has_relative_attention_bias, num_buckets,
                 max_distance, gru_rel_pos):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        self.gru_rel_pos = gru_rel_pos
        self.backend = "sdpa"  # or "flex" (TransformerEncoder.set_attention_backend)
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def compute_bias(self, positions: torch.Tensor) -> torch.Tensor:
        """positions ``(B or 1, L)`` -> bias ``(B or 1, H, L, L)`` (row = query, column = key)."""
        relative = positions[:, None, :] - positions[:, :, None]
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance)
        # contiguous (B|1, H, L, L): every layer reads it row-wise when building its mask
        return self.relative_attention_bias(buckets).permute(0, 3, 1, 2).contiguous()

    def _gate(self, q: torch.Tensor) -> torch.Tensor:
        """Per-query gate of the relative bias from q ``(B, L, H, D/H)``, returned as ``(B, H, L, 1)``."""
        batch, length = q.shape[:2]
        logits = self.grep_linear(q).view(batch, length, self.num_heads, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(logits).permute(0, 2, 1, 3).unsqueeze(-1).unbind(-2)
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0

    @staticmethod
    def _float_mask(bias, gate, pad, workspace: Optional[dict]):
        """SDPA's float mask ``gate * bias + pad`` (or the parts given), written into the buffer kept
        in ``workspace`` when one is given (no-grad forwards), else a fresh tensor."""
        if bias is None:
            return pad
        if gate is None:
            return bias if pad is None else bias + pad
        out = None
        if workspace is not None:
            full = (gate.shape[0], gate.shape[1], gate.shape[2], bias.shape[-1])
            out = workspace.get("attn_mask")
            if out is None or out.shape != full or out.dtype != gate.dtype or out.device != gate.device:
                out = workspace["attn_mask"] = gate.new_empty(full)
        if pad is None:
            return torch.mul(gate, bias, out=out) if out is not None else gate * bias
        return torch.addcmul(pad, gate, bias, out=out) if out is not None else torch.addcmul(pad, gate, bias)

    def forward(self, x, key_padding_mask=None, position_bias=None, workspace: Optional[dict] = None):
        """x ``(B, L, C)``; key_padding_mask ``(B, L)`` bool; position_bias ``(B|1, H, L, L)``.

        ``workspace``: a dict shared by the layers of one no-grad forward; the float attention
        mask is then written into a buffer kept there instead of a fresh tensor per layer.
        """
        batch, length, channels = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        if self.backend == "flex":
            return self._flex_forward(q, k, v, key_padding_mask, position_bias)
        pad = None
        if key_padding_mask is not None:
            pad = torch.zeros(batch, 1, 1, length, dtype=q.dtype, device=q.device)
            pad.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
        bias = None if position_bias is None else position_bias.to(q.dtype)
        gate = self._gate(q) if bias is not None and self.gru_rel_pos else None
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            # CPU SDPA has no fused dropout: one node, in place, with cheap masks (dropout.py)
            out = attention_with_dropout(q, k, v, self.dropout, bias, gate, pad)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._float_mask(bias, gate, pad, workspace),
                                                 dropout_p=self.dropout if self.training else 0.0)
        # SDPA's CPU and CUDA kernels return a (B, L, H, D/H) layout: this reshape is then free
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, channels))

    def _flex_forward(self, q, k, v, key_padding_mask, bias_table: Optional[RelativeBiasTable]):
        if self.training and self.dropout > 0:
            raise ValueError(f"attention_backend 'flex' has no attention dropout: set attention_dropout=0 "
                             f"(it is {self.dropout}) or use attention_backend 'sdpa'")
        if bias_table is None:
            raise ValueError("attention_backend 'flex' needs relative_position_embedding=True; use 'sdpa'")
        if q.device.type == "cpu" and q.requires_grad:
            raise ValueError("attention_backend 'flex' has no backward on CPU (torch's flex_attention): "
                             "train with attention_backend 'sdpa' there, or run without autograd")
        batch, length, heads, width = q.shape
        gate = self._gate(q) if self.gru_rel_pos else None
        out = flex_gated_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias_table, gate,
                                   key_padding_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, heads * width))


class TransformerLayer(nn.Module):
    """Post-LN layer with DeepNorm residual scaling (official ``TransformerSentenceEncoderLayer``)."""

    def __init__(self, cfg, has_relative_attention_bias: bool, num_layers: int):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(
            dim, cfg.encoder_attention_heads, cfg.attention_dropout, has_relative_attention_bias,
            cfg.num_buckets, cfg.max_distance, cfg.gru_rel_pos,
        )
        self.dropout = Dropout(cfg.dropout)
        self.activation_dropout = Dropout(cfg.activation_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.alpha = math.pow(2.0 * num_layers, 0.25) if cfg.deep_norm else 1.0

    def forward(self, x, padding_mask=None, position_bias=None, workspace: Optional[dict] = None):
        attn = self.self_attn(x, padding_mask, position_bias, workspace=workspace)
        x = self.self_attn_layer_norm(torch.add(self.dropout(attn), x, alpha=self.alpha))  # x * alpha + attn
        hidden = self.fc1(x).float()
        if torch.is_grad_enabled():
            hidden = F.gelu(hidden)  # exact (erf) GELU in fp32, as officially
        else:  # no autograd: in place on fc1's output, saving a (B, L, ffn) temporary
            hidden = torch.ops.aten.gelu_(hidden)  # (a forward hook on fc1 that keeps its output sees this)
        hidden = hidden.type_as(x)
        hidden = self.dropout(self.fc2(self.activation_dropout(hidden)))
        return self.final_layer_norm(torch.add(hidden, x, alpha=self.alpha))


class TransformerEncoder(nn.Module):
    """Conv positional embedding + LayerNorm + a stack of :class:`TransformerLayer`.

    ``cfg`` needs the official encoder fields (``encoder_layers``, ``encoder_embed_dim``,
    ``conv_pos``, ``relative_position_embedding``, ...); ``num_layers`` overrides the depth
    (used by the label predictor and the tokenizer estimator).
    """

    def __init__(self, cfg, num_layers: Optional[int] = None, gradient_decay: float = 1.0):
        super().__init__()
        dim = cfg.encoder_embed_dim
        layers = cfg.encoder_layers if num_layers is None else num_layers
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), SamePad(cfg.conv_pos), nn.GELU()
        )
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = Dropout(cfg.dropout)
        self.layerdrop = cfg.encoder_layerdrop
        self.gradient_decay = gradient_decay
        self.relative_position_embedding = cfg.relative_position_embedding
        self.layers = nn.ModuleList(
            [TransformerLayer(cfg, cfg.relative_position_embedding, layers) for _ in range(layers)]
        )
        if cfg.relative_position_embedding:
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:  # one table, listed under every layer's key (official layout)
                layer.self_attn.relative_attention_bias = shared

    def set_attention_backend(self, backend: str) -> None:
        """``sdpa`` (float mask, default) or ``flex`` (score_mod, no L x L mask) for every layer."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend={backend!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
        for block in self.layers:
            block.self_attn.backend = backend

    def compile_layers(self) -> None:
        """``torch.compile`` every layer in place (dynamic shapes; parameter names unchanged)."""
        for block in self.layers:
            block.compile(dynamic=True)

    def positional_embedding(self, x, positions=None, full_length=None):
        """Conv positional embedding of x ``(B, L, C)``, on the full sequence when ``positions`` is given."""
        if positions is None:
            return self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        full = x.new_zeros(x.size(0), full_length, x.size(2))
        full.scatter_(1, positions.unsqueeze(-1).expand_as(x), x)
        full = self.pos_conv(full.transpose(1, 2)).transpose(1, 2)
        return full.gather(1, positions.unsqueeze(-1).expand_as(x))

    def forward(self, x, padding_mask=None, positions=None, full_length=None, layer: Optional[int] = None):
        """x ``(B, L, C)`` -> (output ``(B, L, C)``, list of every layer's output).

        ``layer`` stops after that layer (0-based) and returns its output, like the
        official ``forward(..., layer=k)``.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.positional_embedding(x, positions, full_length)
        x = self.dropout(self.layer_norm(x))
        position_bias = None
        if self.relative_position_embedding:
            if positions is None:
                positions = torch.arange(x.size(1), device=x.device).unsqueeze(0)
            attention = self.layers[0].self_attn
            if attention.backend == "flex":
                position_bias = RelativeBiasTable(attention, positions, relative_position_bucket)
            else:
                position_bias = attention.compute_bias(positions)
        # without autograd the layers share one attention-mask buffer (see MultiheadAttention)
        workspace = None if torch.is_grad_enabled() else {}
        layer_results = []
        for i, block in enumerate(self.layers):
            if self.gradient_decay != 1.0:
                x = GradMultiply.apply(x, self.gradient_decay)
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                layer_results.append(x)
                continue
            x = block(x, padding_mask, position_bias, workspace=workspace)
            layer_results.append(x)
            if layer is not None and i == layer:
                break
        return x, layer_results


def init_encoder_weights(encoder: TransformerEncoder, deep_norm: bool) -> None:
    """Official initialisation (``init_bert_params`` then the DeepNorm re-scaling).

    Linear and Embedding weights ~ N(0, 0.02) with zero biases; with DeepNorm, q/k get
    xavier_normal(gain 1) and v/out/fc1/fc2 xavier_normal(gain (8 * layers) ** -0.25).
    """
    for module in encoder.layers.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
    if deep_norm:
        beta = math.pow(8.0 * len(encoder.layers), -0.25)
        for layer in encoder.layers:
            attn = layer.self_attn
            nn.init.xavier_normal_(attn.q_proj.weight, gain=1)
            nn.init.xavier_normal_(attn.k_proj.weight, gain=1)
            for linear in (attn.v_proj, attn.out_proj, layer.fc1, layer.fc2):
                nn.init.xavier_normal_(linear.weight, gain=beta)
