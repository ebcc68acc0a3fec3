"""The logistic-regression probe as one linear map of raw clip features.

One fit for both places that need it: the ``linear`` probe and the fbank baseline (``probe.py``) score
held-out clips with it, and ``model.head_init=probe`` writes it into a fine-tuning head
(``tasks/head_from_probe.py``). Features are standardised (mean/std of the training clips), the model is
sklearn's L2 logistic regression (``C``), and the standardisation is folded into the returned weights.
"""

from typing import Tuple

import numpy as np


def fit_linear(x, targets, multilabel: bool, C: float = 1.0, max_iter: int = 2000) -> Tuple[np.ndarray, np.ndarray]:
    """(``(classes, D)`` weights, ``(classes,)`` biases) whose ``x @ W.T + b`` are the probe's logits, fit on
    ``x (clips, D)`` and the ``(clips, classes)`` multi-hot ``targets``.

    Single-label: one multinomial model (two classes: the class-1 logit against 0); multi-label: one binary
    model per class (one-vs-rest). A class without a training clip gets zero weights and a bias 10 below the
    lowest fitted one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    targets = np.asarray(targets)
    scaler = StandardScaler().fit(x)
    standardised = scaler.transform(x)
    if multilabel:
        y = (targets > 0).astype(np.int64)
        present = np.flatnonzero(y.sum(0) > 0)
        fitted = OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter)).fit(standardised, y[:, present])
        coef = np.concatenate([e.coef_ for e in fitted.estimators_])
        intercept = np.concatenate([e.intercept_ for e in fitted.estimators_])
    else:
        if not np.all((targets > 0).sum(1) == 1):
            raise ValueError("single-label targets need exactly one class per clip")
        fitted = LogisticRegression(C=C, max_iter=max_iter).fit(standardised, targets.argmax(1))
        present, coef, intercept = fitted.classes_, fitted.coef_, fitted.intercept_
        if len(present) == 2:  # sklearn's binary model: one logit, for classes_[1]
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = np.zeros((targets.shape[1], standardised.shape[1]))
    bias = np.full(targets.shape[1], float(np.min(intercept)) - 10.0)
    weight[present] = coef / scaler.scale_
    bias[present] = intercept - weight[present] @ scaler.mean_
    return weight, bias
