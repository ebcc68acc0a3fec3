"""Fine-tuning augmentations, run inside the model in training mode (on the model's device).

All randomness comes from torch's generator, which fairseq re-seeds every update
(``seed + num_updates``), so a resumed run draws the same augmentations.

* :func:`roll` (waveform): each clip is rotated in time by a random offset within its
  valid (non-padded) part; padding stays where it is.
* :func:`mixup` (waveform + targets): clip ``i`` becomes ``lam_i * x_i + (1 - lam_i) *
  x_perm(i)`` with ``lam_i ~ Beta(alpha, alpha)`` (applied to each clip with probability
  ``prob``, ``lam = 1`` otherwise) and a random pairing ``perm``; targets (multi-hot or
  one-hot rows) mix with the same weights and the mixture is padding only where both clips
  are. Mixing happens on waveforms (AST style), before the fbank.
* :func:`spec_augment` (normalised fbank ``(B, T, F)``): ``num_masks`` time masks and
  ``num_masks`` frequency masks per clip, each of width uniform in
  ``[0, 2 * ratio * size / num_masks]`` frames/bins, so about ``ratio`` of the frames and of
  the bins are covered on average (less where masks overlap). Masked values are set to 0,
  the mean of the normalised fbank. Time masks stay inside the clip's valid frames.
"""

from typing import Optional, Tuple

import torch


def valid_lengths(padding_mask: Optional[torch.Tensor], batch: int, length: int, device) -> torch.Tensor:
    """Number of leading valid positions per row ``(B,)`` (padding is a suffix)."""
    if padding_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return (~padding_mask).sum(dim=1).clamp_min(1)


def roll(source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rotate every waveform ``(B, L)`` by a random offset within its valid samples."""
    batch, length = source.shape
    lengths = valid_lengths(padding_mask, batch, length, source.device)
    shift = (torch.rand(batch, device=source.device) * lengths).long()
    pos = torch.arange(length, device=source.device).unsqueeze(0).expand(batch, -1)
    rolled = torch.remainder(pos - shift.unsqueeze(1), lengths.unsqueeze(1))
    index = torch.where(pos < lengths.unsqueeze(1), rolled, pos)
    return source.gather(1, index)


def mixup(
    source: torch.Tensor,
    padding_mask: Optional[torch.Tensor],
    target: torch.Tensor,
    alpha: float,
    prob: float = 1.0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mix waveforms and float targets ``(B, C)`` of random clip pairs; see the module doc."""
    if alpha <= 0 or prob <= 0 or source.size(0) < 2:
        return source, padding_mask, target
    batch = source.size(0)
    device = source.device
    beta = torch.distributions.Beta(torch.tensor(float(alpha), device=device), torch.tensor(float(alpha), device=device))
    lam = beta.sample((batch,))
    apply = torch.rand(batch, device=device) < prob
    lam = torch.where(apply, lam, torch.ones_like(lam))
    perm = torch.randperm(batch, device=device)
    mixed = lam.unsqueeze(1) * source + (1.0 - lam.unsqueeze(1)) * source[perm]
    target = lam.unsqueeze(1).to(target.dtype) * target + (1.0 - lam.unsqueeze(1)).to(target.dtype) * target[perm]
    if padding_mask is not None:
        # a partner's samples only count where it is mixed in at all
        partner_pad = padding_mask[perm] | (lam == 1.0).unsqueeze(1)
        padding_mask = padding_mask & partner_pad
    return mixed, padding_mask, target


def _band_masks(lengths: torch.Tensor, size: int, ratio: float, num_masks: int) -> torch.Tensor:
    """``(B, size)`` bool: ``num_masks`` random bands per row inside ``[0, lengths)``."""
    batch = lengths.size(0)
    device = lengths.device
    max_width = 2.0 * ratio * lengths.float() / num_masks  # (B,)
    width = (torch.rand(batch, num_masks, device=device) * max_width.unsqueeze(1)).long()
    width = torch.minimum(width, lengths.unsqueeze(1))
    start = (torch.rand(batch, num_masks, device=device) * (lengths.unsqueeze(1) - width + 1)).long()
    pos = torch.arange(size, device=device).view(1, 1, size)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(
    fbank: torch.Tensor,
    time_ratio: float,
    freq_ratio: float,
    num_masks: int = 2,
    frame_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Time and frequency masking of a normalised fbank ``(B, T, F)`` (masked values -> 0)."""
    if num_masks <= 0 or (time_ratio <= 0 and freq_ratio <= 0):
        return fbank
    batch, frames, bins = fbank.shape
    mask = torch.zeros(batch, frames, bins, dtype=torch.bool, device=fbank.device)
    if time_ratio > 0:
        lengths = valid_lengths(frame_padding_mask, batch, frames, fbank.device)
        mask |= _band_masks(lengths, frames, time_ratio, num_masks).unsqueeze(2)
    if freq_ratio > 0:
        lengths = torch.full((batch,), bins, dtype=torch.long, device=fbank.device)
        mask |= _band_masks(lengths, bins, freq_ratio, num_masks).unsqueeze(1)
    return fbank.masked_fill(mask, 0.0)
