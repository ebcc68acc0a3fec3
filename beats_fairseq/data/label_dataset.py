"""Labelled audio for classification: :class:`AudioDataset` + one label line per manifest line.

The label file (``.lbl``/``.mlbl``) has one line per manifest entry (root line excluded),
holding comma-separated class ids; single-label sets must have exactly one id per line.
Entries the manifest drops (too short) drop their label line too (``kept_indices``).

Batches get ``target``: a float multi-hot ``(B, C)`` in multi-label mode, a ``LongTensor
(B,)`` of class ids in single-label mode.

Weighted sampling (AS-2M style): with ``sample_weights`` (one weight per manifest line, or
``"labels"`` for weights from the label frequencies, ``w_i = sum over the clip's classes c of
1 / count(c)``), each epoch draws ``epoch_samples`` clips with replacement, with probability
proportional to ``w_i``. The draw uses ``np.random`` inside :meth:`ordered_indices`, which
fairseq seeds with ``seed + epoch``: reproducible, resumable and identical on every rank.

The class ids of all clips are held in two numpy arrays (:class:`ClipLabels`), not one Python
list per clip, for the reason the manifest's paths are (``manifest.Manifest``): fork-started
DataLoader workers would copy the pages of 2M small lists as they touch their reference counts.
"""

import logging
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from .audio_dataset import AudioDataset
from .manifest import ManifestError, read_label_file

logger = logging.getLogger(__name__)


def label_frequency_weights(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """``w_i = sum_{c in labels_i} 1 / count(c)``: every class gets the same expected share."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for ids in labels:
        counts[list(ids)] += 1
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return np.asarray([inverse[list(ids)].sum() for ids in labels], dtype=np.float64)


def read_weights_file(path: str, num_lines: int) -> np.ndarray:
    """One non-negative float per manifest line (e.g. AudioMAE/AST ``weights.csv``)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) != num_lines:
        raise ManifestError(f"{path}: {len(lines)} lines but the manifest has {num_lines} entries "
                            "(one weight per entry)")
    out = []
    for lineno, line in enumerate(lines, start=1):
        try:
            w = float(line.strip().split(",")[-1])
        except ValueError:
            raise ManifestError(f"{path}, line {lineno}: expected a float weight, found {line!r}") from None
        if not w >= 0:
            raise ManifestError(f"{path}, line {lineno}: weights must be >= 0, found {w}")
        out.append(w)
    return np.asarray(out, dtype=np.float64)


class ClipLabels:
    """Class ids of every clip: ``values`` (int32) and ``offsets`` (int64); ``labels[i]`` is a list."""

    def __init__(self, lists: Sequence[Sequence[int]]):
        self.offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(ids) for ids in lists])
        self.values = np.fromiter((c for ids in lists for c in ids), dtype=np.int32, count=int(self.offsets[-1]))

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i) -> List[int]:
        return self.values[self.offsets[i]:self.offsets[i + 1]].tolist()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class LabelledAudioDataset(AudioDataset):
    """:class:`AudioDataset` with class targets; see the module docstring."""

    def __init__(
        self,
        manifest_path: str,
        label_path: str,
        num_classes: int,
        multilabel: bool = True,
        sample_weights: Union[None, str, np.ndarray] = None,
        epoch_samples: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(manifest_path, **kwargs)
        self.label_path = label_path
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        all_labels = read_label_file(label_path, len(self.manifest), num_classes=self.num_classes)
        if not self.multilabel:
            for lineno, ids in enumerate(all_labels, start=1):
                if len(ids) != 1:
                    raise ManifestError(
                        f"{label_path}, line {lineno}: single-label task but {len(ids)} class ids {ids} "
                        "(set task.multilabel=true for multi-label data)"
                    )
        self.labels = ClipLabels([all_labels[j] for j in self.kept_indices])
        del all_labels

        self.sample_weights = None
        if sample_weights is not None:
            if isinstance(sample_weights, str):
                if sample_weights != "labels":
                    raise ValueError(f"sample_weights must be 'labels', None or an array, got {sample_weights!r}")
                weights = label_frequency_weights(self.labels, self.num_classes)
            else:
                weights = np.asarray(sample_weights, dtype=np.float64)
                if len(weights) != len(self.manifest):
                    raise ValueError(f"{len(weights)} sample weights for {len(self.manifest)} manifest entries")
                weights = weights[self.kept_indices]
            if weights.sum() <= 0:
                raise ValueError(f"{manifest_path}: the sample weights sum to 0")
            self.sample_weights = weights / weights.sum()
        self.epoch_samples = int(epoch_samples) if epoch_samples else len(self)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.values, minlength=self.num_classes).astype(np.int64)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # weighted sampling draws new clips every epoch, so batches are rebuilt
        return self.sample_weights is None

    def ordered_indices(self):
        if self.sample_weights is None or not self.shuffle:
            return super().ordered_indices()
        order = np.random.choice(len(self), size=self.epoch_samples, replace=True, p=self.sample_weights)
        order = order[np.argsort(self.sizes[order], kind="stable")]
        return order[::-1].copy()

    def extra_item(self, i):
        return {"label": self.labels[i]}

    def collate_extra(self, samples, batch):
        if self.multilabel:
            target = torch.zeros(len(samples), self.num_classes, dtype=torch.float32)
            for k, s in enumerate(samples):
                target[k, s["label"]] = 1.0
        else:
            target = torch.LongTensor([s["label"][0] for s in samples])
        batch["target"] = target
