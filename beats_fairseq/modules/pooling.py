"""Pooling of patch sequences into clip values: over all patches (the official head), or by frequency
band (the probes' ``bands`` clip feature, the classifier's ``bands`` and ``band_stats`` heads).

The encoder's patches are a time-major grid: patch ``n = t * bands + b`` holds time step ``t`` of
frequency band ``b`` (``BeatsBackbone.frequency_bands`` bands: 128 mel bins / patch size). Pooling
over all patches mixes the bands; these functions keep them apart. The patch padding mask follows the
official rule (``modules/fbank.py``), which can end part-way through a time step, so every band
counts its own valid time steps.
"""

from typing import Optional, Tuple

import torch


def band_grid(x: torch.Tensor, padding_mask: Optional[torch.Tensor], bands: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, C)`` patches -> (``(B, T, bands, C)`` grid, ``(B, T, bands, 1)`` float: 1 = valid patch)."""
    batch, patches, dim = x.shape
    if patches % bands:
        raise ValueError(f"{patches} patches are not whole time steps of {bands} frequency bands")
    keep = torch.ones_like(x[..., :1]) if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)
    return x.reshape(batch, -1, bands, dim), keep.reshape(batch, -1, bands, 1)


def band_mean(x: torch.Tensor, padding_mask: Optional[torch.Tensor], bands: int) -> torch.Tensor:
    """``(B, N, C)`` patches -> ``(B, bands, C)``: the mean over the valid time steps of every band."""
    grid, keep = band_grid(x, padding_mask, bands)
    return (grid * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


def time_stats(x: torch.Tensor, padding_mask: Optional[torch.Tensor], bands: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, C)`` patches -> (mean, std), each ``(B, bands, C)``: over the valid time steps of every band
    (``bands = 1``: over all valid patches). The std is the population one (divided by the count)."""
    grid, keep = band_grid(x, padding_mask, bands)
    mean = band_mean(x, padding_mask, bands)
    var = band_mean(((grid - mean.unsqueeze(1)) ** 2).flatten(1, 2), padding_mask, bands)
    return mean, var.clamp_min(1e-12).sqrt()


def masked_mean(x: torch.Tensor, padding_mask) -> torch.Tensor:
    """Mean over dim 1 of ``x (B, N, D)`` ignoring padded positions (official rule)."""
    if padding_mask is None or not padding_mask.any():
        return x.mean(dim=1)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(dim=1) / valid.sum(dim=1)


def clip_logits(patch_logits: torch.Tensor, padding_mask, head_pooling: str, bands: int) -> torch.Tensor:
    """Per-patch logits ``(B, N, classes)`` -> clip logits ``(B, classes)``: their mean over the valid patches
    (``mean``, the official rule), or the sum over the bands of each band's mean over time (``bands``)."""
    if head_pooling == "bands":
        return band_mean(patch_logits, padding_mask, bands).sum(dim=1)
    return masked_mean(patch_logits, padding_mask)


def stats_feature(x: torch.Tensor, padding_mask: Optional[torch.Tensor], bands: int) -> torch.Tensor:
    """``(B, 2 * bands * C)``: every band's mean over time, then every band's std (:func:`time_stats`)."""
    mean, std = time_stats(x, padding_mask, bands)
    return torch.cat([mean.flatten(1), std.flatten(1)], dim=-1)


def head_input(x: torch.Tensor, padding_mask, head_pooling: str, bands: int) -> torch.Tensor:
    """The clip feature a linear head of a clip reads: every band's mean and std over time, concatenated
    (``band_stats``: ``(B, 2 * bands * C)``, all bands' means then all bands' stds, the probes' ``bands``
    feature), or the mean over all valid patches (``mean``: ``(B, C)``)."""
    if head_pooling == "band_stats":
        return stats_feature(x, padding_mask, bands)
    if head_pooling == "mean":
        return masked_mean(x, padding_mask)
    raise ValueError(f"a {head_pooling!r} head reads every patch, not one clip feature")


def head_logits(head, x: torch.Tensor, padding_mask, head_pooling: str, bands: int) -> torch.Tensor:
    """Clip logits ``(B, classes)`` of a classifier ``head`` on encoder output ``x (B, N, C)``: per-patch
    logits pooled by :func:`clip_logits` (``mean``, ``bands``), or, for ``band_stats``, the head applied
    to :func:`head_input`."""
    if head_pooling == "band_stats":
        return head(head_input(x, padding_mask, head_pooling, bands))
    return clip_logits(head(x), padding_mask, head_pooling, bands)
