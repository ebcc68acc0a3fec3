"""Fine-tuning augmentations, run inside the model in training mode (on the model's device).

Random numbers come from a :class:`ClipRandom` (what the classifier uses in training), by the
per-clip rule of ``beats_fairseq/seeding.py``; only mixup's pairing depends on the batch
(seeded by all its clip ids). Without clip ids, :class:`TorchRandom` draws from torch's generator.

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

import zlib
from typing import Optional, Tuple

import numpy as np
import torch

from .seeding import derived_seed


class TorchRandom:
    """Draws from torch's global generator, on ``device``."""

    def __init__(self, batch: int, device):
        self.batch, self.device = batch, device

    def uniform(self, purpose: str, *shape: int) -> torch.Tensor:
        return torch.rand(self.batch, *shape, device=self.device)

    def beta(self, purpose: str, alpha: float) -> torch.Tensor:
        a = torch.tensor(float(alpha), device=self.device)
        return torch.distributions.Beta(a, a).sample((self.batch,))

    def permutation(self, purpose: str) -> torch.Tensor:
        return torch.randperm(self.batch, device=self.device)


class ClipRandom(TorchRandom):
    """Per-clip draws: row ``b`` is a function of (seed, update, ``clip_ids[b]``, purpose) only."""

    def __init__(self, seed: int, update: int, clip_ids: torch.Tensor, device):
        super().__init__(int(clip_ids.numel()), device)
        self.base = (int(seed) % 2**32, int(update) + 1)
        self.ids = [int(i) for i in clip_ids.reshape(-1).tolist()]

    def _generator(self, purpose: str, *clips: int) -> np.random.Generator:
        return np.random.default_rng(derived_seed(*self.base, zlib.crc32(purpose.encode()), *clips))

    def _rows(self, draw) -> torch.Tensor:
        return torch.as_tensor(np.stack([draw(clip) for clip in self.ids]), dtype=torch.float32).to(self.device)

    def uniform(self, purpose: str, *shape: int) -> torch.Tensor:
        return self._rows(lambda clip: self._generator(purpose, clip).random(shape))

    def beta(self, purpose: str, alpha: float) -> torch.Tensor:
        return self._rows(lambda clip: self._generator(purpose, clip).beta(alpha, alpha))

    def permutation(self, purpose: str) -> torch.Tensor:
        order = self._generator(purpose, *self.ids).permutation(self.batch)
        return torch.as_tensor(order, dtype=torch.long, device=self.device)


def valid_lengths(padding_mask: Optional[torch.Tensor], batch: int, length: int, device) -> torch.Tensor:
    """Number of leading valid positions per row ``(B,)`` (padding is a suffix)."""
    if padding_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return (~padding_mask).sum(dim=1).clamp_min(1)


def roll(source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
         rng: Optional[TorchRandom] = None) -> torch.Tensor:
    """Rotate every waveform ``(B, L)`` by a random offset within its valid samples."""
    batch, length = source.shape
    rng = rng or TorchRandom(batch, source.device)
    lengths = valid_lengths(padding_mask, batch, length, source.device)
    shift = (rng.uniform("roll").to(source.device) * lengths).long().clamp_max(lengths - 1)
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
    rng: Optional[TorchRandom] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mix waveforms and float targets ``(B, C)`` of random clip pairs; see the module doc."""
    if alpha <= 0 or prob <= 0 or source.size(0) < 2:
        return source, padding_mask, target
    rng = rng or TorchRandom(source.size(0), source.device)
    lam = rng.beta("mixup_lambda", alpha).to(source.dtype)
    apply = rng.uniform("mixup_apply") < prob
    lam = torch.where(apply, lam, torch.ones_like(lam))
    perm = rng.permutation("mixup_pairs")
    mixed = lam.unsqueeze(1) * source + (1.0 - lam.unsqueeze(1)) * source[perm]
    target = lam.unsqueeze(1).to(target.dtype) * target + (1.0 - lam.unsqueeze(1)).to(target.dtype) * target[perm]
    if padding_mask is not None:
        # a partner's samples only count where it is mixed in at all
        partner_pad = padding_mask[perm] | (lam == 1.0).unsqueeze(1)
        padding_mask = padding_mask & partner_pad
    return mixed, padding_mask, target


def _band_masks(lengths: torch.Tensor, size: int, ratio: float, num_masks: int, rng: TorchRandom,
                purpose: str) -> torch.Tensor:
    """``(B, size)`` bool: ``num_masks`` random bands per row inside ``[0, lengths)``."""
    device = lengths.device
    draws = rng.uniform(purpose, 2, num_masks).to(device)
    max_width = 2.0 * ratio * lengths.float() / num_masks  # (B,)
    width = (draws[:, 0] * max_width.unsqueeze(1)).long()
    width = torch.minimum(width, lengths.unsqueeze(1))
    start = (draws[:, 1] * (lengths.unsqueeze(1) - width + 1)).long()
    pos = torch.arange(size, device=device).view(1, 1, size)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(
    fbank: torch.Tensor,
    time_ratio: float,
    freq_ratio: float,
    num_masks: int = 2,
    frame_padding_mask: Optional[torch.Tensor] = None,
    rng: Optional[TorchRandom] = None,
) -> torch.Tensor:
    """Time and frequency masking of a normalised fbank ``(B, T, F)`` (masked values -> 0)."""
    if num_masks <= 0 or (time_ratio <= 0 and freq_ratio <= 0):
        return fbank
    batch, frames, bins = fbank.shape
    rng = rng or TorchRandom(batch, fbank.device)
    mask = torch.zeros(batch, frames, bins, dtype=torch.bool, device=fbank.device)
    if time_ratio > 0:
        lengths = valid_lengths(frame_padding_mask, batch, frames, fbank.device)
        mask |= _band_masks(lengths, frames, time_ratio, num_masks, rng, "specaug_time").unsqueeze(2)
    if freq_ratio > 0:
        lengths = torch.full((batch,), bins, dtype=torch.long, device=fbank.device)
        mask |= _band_masks(lengths, bins, freq_ratio, num_masks, rng, "specaug_freq").unsqueeze(1)
    return fbank.masked_fill(mask, 0.0)
