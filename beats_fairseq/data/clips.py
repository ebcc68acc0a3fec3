"""Clips read for inference, in batches: what the command-line tools and the linear probe feed models.

Clips are read with :func:`beats_fairseq.data.audio.read_audio` (mono, 16 kHz: other rates are
resampled and several channels averaged on the fly), zero-padded to the longest clip of their
batch and passed with a waveform padding mask (``True`` = padding); the models turn it into
the patch-level mask with the official rule. Batches keep the input order.
"""

import logging
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..constants import SAMPLE_RATE
from .audio import MIN_SAMPLES_ONE_PATCH, AudioReadError, read_audio
from .manifest import read_manifest

logger = logging.getLogger(__name__)


@dataclass
class Clip:
    key: str  # how outputs name the clip: the manifest relpath, or the file path as given
    path: str  # path to read
    entry: int  # 0-based position in the manifest / list of files


def clips_from_manifest(path: str) -> List[Clip]:
    manifest = read_manifest(path)
    return [Clip(manifest.relpath(i), manifest.abspath(i), i) for i in range(len(manifest))]


def clips_from_files(paths) -> List[Clip]:
    return [Clip(p, p, i) for i, p in enumerate(paths)]


class ClipDataset(Dataset):
    """``(position, waveform or None, error message or None)`` per clip."""

    def __init__(self, clips: List[Clip], max_samples: Optional[int] = None):
        self.clips, self.max_samples = clips, max_samples

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        clip = self.clips[i]
        try:
            wav = read_audio(clip.path, SAMPLE_RATE)
            if wav.numel() < MIN_SAMPLES_ONE_PATCH:
                raise AudioReadError(clip.path, f"only {wav.numel()} samples at 16 kHz; BEATs needs at least "
                                                f"{MIN_SAMPLES_ONE_PATCH} (0.175 s, one row of 16x16 patches)")
        except AudioReadError as exc:
            return i, None, str(exc)
        if self.max_samples is not None:
            wav = wav[: self.max_samples]
        return i, wav, None


def _collate(items):
    return items


@dataclass
class Batch:
    positions: List[int]  # indices into the clip list
    source: torch.Tensor  # (B, L) float32 on the device
    padding_mask: Optional[torch.Tensor]  # (B, L) bool, True = padding; None when nothing is padded
    lengths: List[int]


class ClipBatches:
    """Iterate over batches of clips; ``skipped`` lists ``(clip, message)`` of unreadable ones
    (with ``skip_bad``; otherwise the first unreadable clip is an error, :meth:`unreadable`)."""

    def __init__(self, clips: List[Clip], device, batch_size: int = 8, num_workers: int = 0,
                 max_samples: Optional[int] = None, skip_bad: bool = False, progress: bool = False,
                 desc: str = "clips"):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        self.clips, self.device, self.desc = clips, device, desc
        self.batch_size, self.num_workers = batch_size, num_workers
        self.skip_bad, self.progress, self.max_samples = skip_bad, progress, max_samples
        self.skipped = []

    def unreadable(self, message: str):
        raise RuntimeError(f"{message} (or set skip_bad to skip unreadable files)")

    def __iter__(self):
        loader = DataLoader(
            ClipDataset(self.clips, self.max_samples), batch_size=self.batch_size, shuffle=False,
            num_workers=self.num_workers, collate_fn=_collate,
        )
        with tqdm(total=len(self.clips), desc=self.desc, unit="clip", disable=not self.progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for items in loader:
                good = []
                for i, wav, error in items:
                    if error is None:
                        good.append((i, wav))
                    elif self.skip_bad:
                        logger.warning("skipping: %s", error)
                        self.skipped.append((self.clips[i], error))
                    else:
                        self.unreadable(error)
                bar.update(len(items))
                if good:
                    yield self._batch(good)

    def _batch(self, good) -> Batch:
        lengths = [w.numel() for _, w in good]
        longest = max(lengths)
        source = torch.zeros(len(good), longest)
        for row, (_, wav) in enumerate(good):
            source[row, : wav.numel()] = wav
        padding_mask = None
        if min(lengths) < longest:
            padding_mask = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
            padding_mask = padding_mask.to(self.device)
        return Batch([i for i, _ in good], source.to(self.device), padding_mask, lengths)

    def report(self) -> None:
        if self.skipped:
            logger.warning("skipped %d of %d clips that could not be read (listed above)",
                           len(self.skipped), len(self.clips))
