"""The logistic-regression probe: one fit for the ``linear`` probe and the fbank baseline (``probe.py``),
which score held-out clips with it, and for ``model.head_init=probe`` (``tasks/head_from_probe.py``),
which writes it into a fine-tuning head as one linear map of the raw features.

Features are standardised (mean/std of the training clips) and the model is sklearn's L2 logistic
regression (``C``): one multinomial model for single-label targets, one binary model per class
(one-vs-rest) for multi-label targets. Classes without a training clip are left out of the fit.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass
class LinearProbe:
    scaler: object  # sklearn StandardScaler fit on the training features
    model: object  # sklearn LogisticRegression, or OneVsRestClassifier of them (multi-label)
    present: np.ndarray  # the classes it was fit on (those with a training clip)
    num_classes: int
    multilabel: bool

    def logits(self, x) -> np.ndarray:
        """``(clips, classes)`` logits of ``x``; -1e9 for the classes without a training clip."""
        out = np.full((len(x), self.num_classes), -1e9)
        scores = self.model.decision_function(self.scaler.transform(x))
        if not self.multilabel and len(self.present) == 2:  # sklearn's binary model: the class-1 logit against 0
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        out[:, self.present] = scores.reshape(len(x), -1)
        return out

    def folded(self) -> Tuple[np.ndarray, np.ndarray]:
        """(``(classes, D)`` weights, ``(classes,)`` biases) whose ``x @ W.T + b`` are :meth:`logits` of raw
        features (the standardisation folded in); a class without a training clip gets zero weights and a
        bias 10 below the lowest fitted one."""
        estimators = self.model.estimators_ if self.multilabel else [self.model]
        coef = np.concatenate([e.coef_ for e in estimators])
        intercept = np.concatenate([e.intercept_ for e in estimators])
        if not self.multilabel and len(self.present) == 2:
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        weight = np.zeros((self.num_classes, coef.shape[1]))
        bias = np.full(self.num_classes, float(np.min(intercept)) - 10.0)
        weight[self.present] = coef / self.scaler.scale_
        bias[self.present] = intercept - weight[self.present] @ self.scaler.mean_
        return weight, bias


def fit_linear(x, targets, multilabel: bool, C: float = 1.0, max_iter: int = 2000) -> LinearProbe:
    """The probe of ``x (clips, D)`` for the ``(clips, classes)`` multi-hot ``targets``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    targets = np.asarray(targets)
    scaler = StandardScaler().fit(x)
    standardised = scaler.transform(x)
    if multilabel:
        y = (targets > 0).astype(np.int64)
        present = np.flatnonzero(y.sum(0) > 0)
        model = OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter)).fit(standardised, y[:, present])
    else:
        if not np.all((targets > 0).sum(1) == 1):
            raise ValueError("single-label targets need exactly one class per clip")
        model = LogisticRegression(C=C, max_iter=max_iter).fit(standardised, targets.argmax(1))
        present = model.classes_
    return LinearProbe(scaler, model, np.asarray(present), targets.shape[1], bool(multilabel))
