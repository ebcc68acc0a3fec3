"""Probes trained with gradient descent on frozen clip features, as the field reads representations.

Beside the logistic regression of ``probe.py`` (``linear``: one layer, any pooling of ``probe.pool``):

* ``weighted-layers`` (SUPERB): the clip features of **every** encoder layer ``(M, L, D)``, each
  layer standardised with the training split's statistics, combined by a learnable softmax-weighted
  sum and read by a linear classifier; weights and classifier are trained together. The learnt layer
  weights are reported: they say which layers carry the task.
* ``mlp`` (HEAR): one hidden layer of ``hidden`` units (ReLU, dropout) on the standardised clip
  embedding of one layer.

Both train with Adam on shuffled mini-batches (:class:`HeadSettings`), cross-entropy for
single-label data and binary cross-entropy for multi-label data, and stop early on the validation
split: after ``patience`` epochs without a better validation metric (accuracy or mAP; at equal
metric, a lower validation loss is better), or after ``max_epochs``, the weights of the best epoch are
kept and scored on the evaluation split.
Everything is seeded (``seed``): the same features give the same result.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn

from .evaluation import LabelledSplit, Score, score


@dataclass
class HeadSettings:
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 500
    patience: int = 30
    hidden: int = 1024  # mlp
    dropout: float = 0.1  # mlp
    seed: int = 0


class WeightedLayers(nn.Module):
    """``(B, L, D)`` -> logits: a softmax-weighted sum of the layers, then a linear classifier."""

    def __init__(self, layers: int, dim: int, classes: int):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(layers))
        self.classifier = nn.Linear(dim, classes)

    @property
    def weights(self) -> torch.Tensor:
        return self.layer_logits.softmax(0)

    def forward(self, x):
        return self.classifier((self.weights[:, None] * x).sum(1))


def mlp(dim: int, classes: int, hidden: int = 1024, dropout: float = 0.1) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def standardise(train: np.ndarray, *others: np.ndarray):
    """Every array standardised per feature (the last axis, per layer for ``(M, L, D)``) with ``train``'s statistics."""
    mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]


class HeadResult(NamedTuple):
    score: Score  # on the evaluation split
    valid: Score  # of the kept epoch, on the validation split
    epochs: int  # trained
    best_epoch: int
    layer_weights: Optional[list]  # weighted-layers: the learnt weight of every layer


def _loss(logits, targets, multilabel: bool):
    if multilabel:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return nn.functional.cross_entropy(logits, targets.argmax(1))


def _probabilities(logits, multilabel: bool) -> np.ndarray:
    return (logits.sigmoid() if multilabel else logits.softmax(-1)).numpy()


def fit_head(kind: str, train_x: np.ndarray, train: LabelledSplit, valid_x: np.ndarray, valid: LabelledSplit,
             eval_x: np.ndarray, evaluated: LabelledSplit, settings: HeadSettings = HeadSettings()) -> HeadResult:
    """Train a ``weighted-layers`` (features ``(M, L, D)``) or ``mlp`` (``(M, D)``) probe on ``train``, stop early on
    ``valid``, score the kept weights on ``evaluated``."""
    if kind == "weighted-layers" and train_x.ndim != 3:
        raise ValueError(f"weighted-layers needs the features of every layer (M, L, D), got {train_x.shape}")
    if kind == "mlp" and train_x.ndim != 2:
        raise ValueError(f"mlp needs one clip embedding per clip (M, D), got {train_x.shape}")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    x, vx, ex = standardise(train_x, valid_x, eval_x)
    y, vy = torch.from_numpy(train.targets()), torch.from_numpy(valid.targets())
    classes, multilabel = train.num_classes, train.multilabel
    head = WeightedLayers(x.size(1), x.size(2), classes) if kind == "weighted-layers" else \
        mlp(x.size(1), classes, settings.hidden, settings.dropout)
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best, best_state, best_epoch, epoch = None, None, 0, 0
    for epoch in range(1, settings.max_epochs + 1):
        head.train()
        for rows in torch.randperm(len(x), generator=generator).split(settings.batch_size):
            optimizer.zero_grad()
            _loss(head(x[rows]), y[rows], multilabel).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            logits = head(vx)
        loss = float(_loss(logits, vy, multilabel))
        key = (score(_probabilities(logits, multilabel), valid).value, -loss)
        if best is None or key > best:
            best, best_epoch = key, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= settings.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    with torch.no_grad():
        probabilities = _probabilities(head(ex), multilabel)
    weights = head.weights.detach().tolist() if isinstance(head, WeightedLayers) else None
    return HeadResult(score(probabilities, evaluated), Score(valid.metric, best[0]), epoch,
                      best_epoch, weights)
