"""Frame-level BEATs features with timestamps, for audio of any length.

BEATs cuts the fbank (25 ms frames every 10 ms) into 16 x 16 patches: a *time column* of
8 frequency patches spans 16 frames, i.e. 160 ms of hop. Column ``t`` reads the samples
``[2560 t, 2560 t + 2800)`` (15 frame shifts plus one 400-sample window), so its centre is
at ``(2560 t + 1400) / 16000 = 0.16 t + 0.0875`` seconds. :func:`frame_features` returns one
vector per column (the column's 8 patch features averaged, or concatenated), the column
centres and a per-column padding mask.

Long audio is run in overlapping chunks whose starts lie on the column grid (multiples of
2560 samples). Every fbank frame, and so every patch, of a chunk is then exactly a frame
of the whole recording, and each chunk contributes the columns nearer its centre than any
other chunk's centre: timestamps are exact and memory is bounded by the chunk. Audio that
fits in one chunk is run in one pass, identical to ``extract_features`` on it.

This module is used by the Python API, ``beats-extract --frames`` and ``beats_fairseq.hear``.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch

from .constants import REDUCTIONS
from .modules.fbank import FRAME_LENGTH, FRAME_SHIFT, NUM_MEL_BINS, SAMPLE_RATE, num_frames


@dataclass
class FrameFeatures:
    features: torch.Tensor  # (B, T, C) for "mean", (B, T, F * C) for "concat" (frequency patch major)
    timestamps: torch.Tensor  # (T,) float64 seconds: the centre of every column
    padding_mask: torch.Tensor  # (B, T) bool, True = the column lies beyond the clip's own columns
    hop_seconds: float  # time between columns (0.16 s for 16x16 patches)


def column_samples(patch_size: int = 16) -> int:
    """Samples between the starts of two time columns (2560 for 16-frame columns)."""
    return patch_size * FRAME_SHIFT


def num_columns(num_samples: int, patch_size: int = 16) -> int:
    """Time columns of a clip of ``num_samples`` processed alone (complete 16-frame rows)."""
    return num_frames(num_samples) // patch_size


def column_timestamps(count: int, patch_size: int = 16) -> torch.Tensor:
    """Centres of the first ``count`` columns in seconds (float64)."""
    span = (patch_size - 1) * FRAME_SHIFT + FRAME_LENGTH  # samples one column reads
    starts = torch.arange(count, dtype=torch.float64) * column_samples(patch_size)
    return (starts + span / 2) / SAMPLE_RATE


def chunk_plan(total_columns: int, chunk_columns: int, hop_columns: int):
    """``[(first column, keep_from, keep_to)]`` of every chunk, covering ``0..total_columns``.

    Chunks start every ``hop_columns``; the last one is moved back to end at the last column
    (more context than a short tail chunk). Where two chunks overlap, the columns up to the
    midpoint of their centres come from the first, the rest from the second.
    """
    starts = [0]
    while starts[-1] + chunk_columns < total_columns:
        starts.append(min(starts[-1] + hop_columns, total_columns - chunk_columns))
    plan = []
    for i, start in enumerate(starts):
        keep_from = 0 if i == 0 else plan[-1][2]
        if i + 1 < len(starts):
            keep_to = (start + starts[i + 1] + chunk_columns) // 2  # nearest-centre split
        else:
            keep_to = total_columns
        plan.append((start, keep_from, keep_to))
    return plan


def chunk_grid(chunk_seconds: Optional[float], hop_seconds: Optional[float], patch_size: int = 16):
    """(chunk samples, chunk columns, hop columns) of a chunking, or None for one pass; checks both values.

    The hop (default half a chunk) is rounded down to whole columns.
    """
    if chunk_seconds is None:
        return None
    chunk_samples = int(round(chunk_seconds * SAMPLE_RATE))
    chunk_columns = num_columns(chunk_samples, patch_size) if chunk_samples > 0 else 0
    if chunk_columns == 0:
        raise ValueError(f"chunk_seconds={chunk_seconds} is shorter than one column "
                         f"({((patch_size - 1) * FRAME_SHIFT + FRAME_LENGTH) / SAMPLE_RATE} s)")
    step = column_samples(patch_size)
    hop = chunk_seconds / 2 if hop_seconds is None else hop_seconds
    hop_columns = int(hop * SAMPLE_RATE // step)
    if not 1 <= hop_columns <= chunk_columns:
        raise ValueError(f"hop_seconds={hop}: must be between one column ({step / SAMPLE_RATE} s) and the "
                         f"chunk ({chunk_columns * step / SAMPLE_RATE} s)")
    return chunk_samples, chunk_columns, hop_columns


def _backbone(model):
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "extract_features") or not hasattr(backbone, "patch_size"):
        raise TypeError(f"{type(model).__name__} is not a BEATs model (no .backbone with extract_features)")
    return backbone


def _reduce(patches: torch.Tensor, freq_patches: int, reduce: str) -> torch.Tensor:
    """(B, T * F, C) time-major patches -> (B, T, C) mean or (B, T, F * C) concatenation."""
    batch, n, dim = patches.shape
    x = patches.view(batch, n // freq_patches, freq_patches, dim)
    return x.mean(dim=2) if reduce == "mean" else x.reshape(batch, n // freq_patches, freq_patches * dim)


def clip_lengths(source: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> List[int]:
    """Valid samples per row (right padding, ``True`` = padding)."""
    if padding_mask is None:
        return [source.size(1)] * source.size(0)
    return (~padding_mask).sum(dim=1).tolist()


def frame_features(
    model,
    source: torch.Tensor,
    padding_mask: Optional[torch.Tensor] = None,
    layer: Optional[int] = None,
    reduce: str = "mean",
    chunk_seconds: Optional[float] = 10.0,
    hop_seconds: Optional[float] = None,
) -> FrameFeatures:
    """Per-column features of waveforms ``(B, L)`` at 16 kHz (``padding_mask`` ``(B, L)``, True = padding).

    ``model``: anything ``beats_fairseq.load`` returns (classifiers and tokenizers give their
    encoder's features) or a ``BeatsBackbone``. ``layer``: 0-based encoder layer (default last).
    ``chunk_seconds=None`` runs the whole input in one pass (memory grows with the square of
    its length); otherwise chunks of that length start every ``hop_seconds`` (default half a
    chunk), both rounded down to whole columns (0.16 s). Column ``t`` of a row is padding when
    ``t`` is not below the row's own column count (:func:`num_columns` of its valid samples).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if source.dim() != 2:
        raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(source.shape)}")
    backbone = _backbone(model)
    patch = backbone.patch_size
    freq = NUM_MEL_BINS // patch
    step = column_samples(patch)
    lengths = clip_lengths(source, padding_mask)
    columns = [num_columns(n, patch) for n in lengths]
    total = num_columns(source.size(1), patch)
    if total == 0:
        raise ValueError(f"{source.size(1)} samples give no complete 16-frame column: BEATs needs at least "
                         f"{(patch - 1) * FRAME_SHIFT + FRAME_LENGTH} samples")
    grid = chunk_grid(chunk_seconds, hop_seconds, patch)
    if grid is None or source.size(1) <= grid[0]:
        feats, _ = backbone.extract_features(source, padding_mask, layer=layer)
        feats = _reduce(feats, freq, reduce)
    else:
        chunk_samples, chunk_columns, hop_columns = grid
        feats = _chunked(backbone, source, padding_mask, columns, total, chunk_samples, chunk_columns,
                         hop_columns, layer, reduce)
    mask = torch.arange(total, device=feats.device)[None, :] >= torch.tensor(columns, device=feats.device)[:, None]
    return FrameFeatures(feats, column_timestamps(total, patch), mask, step / SAMPLE_RATE)


def _chunked(backbone, source, padding_mask, columns, total, chunk_samples, chunk_columns, hop_columns, layer,
             reduce):
    """Run the plan of :func:`chunk_plan`; rows with no valid column in a chunk are skipped (zeros)."""
    step = column_samples(backbone.patch_size)
    freq = NUM_MEL_BINS // backbone.patch_size
    dim = backbone.cfg.encoder_embed_dim * (freq if reduce == "concat" else 1)
    out = source.new_zeros(source.size(0), total, dim)
    columns_t = torch.tensor(columns)
    for start, keep_from, keep_to in chunk_plan(total, chunk_columns, hop_columns):
        rows = torch.nonzero(columns_t > keep_from).flatten()
        if rows.numel() == 0:
            continue
        rows_dev = rows.to(source.device)
        begin = start * step
        piece = source[rows_dev, begin: begin + chunk_samples]
        mask = None
        if padding_mask is not None:
            mask = padding_mask[rows_dev, begin: begin + chunk_samples]
            mask = mask if bool(mask.any()) else None
        feats, _ = backbone.extract_features(piece, mask, layer=layer)
        feats = _reduce(feats, freq, reduce)
        out[rows_dev, keep_from:keep_to] = feats[:, keep_from - start: keep_to - start]
    return out
