"""Classification metrics: mAP (AudioSet protocol) and accuracy, as plain Python floats.

* :func:`mean_average_precision`: macro average over classes of sklearn's
  ``average_precision_score``, **only over classes with at least one positive** in the
  evaluated set (sklearn returns AP 0.0, not nan, for a class without positives, which
  would drag small evaluation sets down).
* :func:`accuracy`: share of clips whose top-scoring class is a true class (single-label:
  ``argmax == target``; multi-label targets: the argmax is one of the positives).
* :func:`accuracy_per_class`: per-class accuracy (recall) of single-label predictions.
* :func:`code_usage`: usage and perplexity of a histogram of codebook labels (the training
  criteria's ``code_usage`` and ``code_perplexity``).

The classification metrics take ``(scores, targets)`` in that order (torch tensors or numpy arrays).

Every function returns ``float`` (never a numpy scalar: those break torch's weights-only
``torch.load`` of fairseq checkpoints that store the best metric).
"""

import logging
import warnings
from typing import Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def multi_hot(targets, num_classes: int) -> np.ndarray:
    """``(N,)`` class ids -> ``(N, C)`` 0/1 matrix; ``(N, C)`` input is thresholded at 0.5."""
    targets = _numpy(targets)
    if targets.ndim == 1:
        out = np.zeros((targets.shape[0], num_classes), dtype=np.float32)
        out[np.arange(targets.shape[0]), targets.astype(np.int64)] = 1.0
        return out
    return (targets >= 0.5).astype(np.float32)


def average_precision_per_class(scores, targets) -> np.ndarray:
    """AP of every class ``(C,)``; ``nan`` for classes without a positive in ``targets``."""
    from sklearn.metrics import average_precision_score

    scores = _numpy(scores).astype(np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (clips, classes), got shape {scores.shape}")
    targets = multi_hot(targets, scores.shape[1])
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in shape")
    ap = np.full(scores.shape[1], np.nan)
    positives = targets.sum(axis=0) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in np.flatnonzero(positives):
            ap[c] = average_precision_score(targets[:, c], scores[:, c])
    return ap


def mean_average_precision(scores, targets, min_clips: int = 1, name: Optional[str] = None) -> float:
    """Macro mAP over the classes with at least one positive; 0.0 (with a warning) when no
    class has one or fewer than ``min_clips`` clips were evaluated."""
    scores = _numpy(scores)
    if scores.shape[0] < max(1, min_clips):
        logger.warning("%smAP over %d clips (< %d) is reported as 0.0", f"{name}: " if name else "",
                       scores.shape[0], min_clips)
        return 0.0
    ap = average_precision_per_class(scores, targets)
    if np.isnan(ap).all():
        logger.warning("%sno class has a positive clip: mAP reported as 0.0", f"{name}: " if name else "")
        return 0.0
    return float(np.nanmean(ap))


def accuracy(scores, targets) -> float:
    """Share of clips whose highest-scoring class is (one of) its true class(es)."""
    scores = _numpy(scores)
    if scores.shape[0] == 0:
        return 0.0
    top = scores.argmax(axis=1)
    targets = _numpy(targets)
    if targets.ndim == 1:
        hits = top == targets.astype(np.int64)
    else:
        hits = targets[np.arange(len(top)), top] >= 0.5
    return float(hits.mean())


def accuracy_per_class(scores, targets):
    """Single-label ``targets`` ``(N,)``: (accuracy of the argmax per true class ``(C,)``, nan for
    classes without clips; clips per class ``(C,)``)."""
    scores, targets = _numpy(scores), _numpy(targets).astype(np.int64)
    num_classes = scores.shape[1]
    hits = scores.argmax(axis=1) == targets
    counts = np.bincount(targets, minlength=num_classes)
    correct = np.bincount(targets[hits], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    return per_class, counts


def code_usage(counts):
    """(usage, perplexity) of the code histogram ``counts`` (per-code label counts).

    Usage is the share of codes used at least once; perplexity is exp of the entropy of the
    code distribution: the number of codes when all are equally frequent, 1 when one code
    takes every label. Both are 0.0 for an empty histogram.
    """
    counts = torch.as_tensor(counts).float()
    if counts.sum() <= 0:
        return 0.0, 0.0
    probs = counts[counts > 0] / counts.sum()
    return float((counts > 0).float().mean()), float(torch.exp(-(probs * probs.log()).sum()))
