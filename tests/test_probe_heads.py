"""The gradient-trained probes (weighted sum of layers, MLP) on synthetic frozen features."""

import numpy as np
import pytest

from beats_fairseq.evaluation import LabelledSplit
from beats_fairseq.probe_heads import HeadSettings, fit_head


def split(name, classes, num_classes=4):
    return LabelledSplit(name, f"{name}.tsv", [[int(c)] for c in classes], num_classes, False)


def synthetic(rng, centres, clips, layers=4, informative=2):
    """Features ``(clips, layers, dim)``: noise everywhere except layer ``informative``, where the class sets
    the mean (well separated)."""
    classes = rng.integers(0, 4, size=clips)
    x = rng.normal(size=(clips, layers, centres.shape[1])).astype(np.float32)
    x[:, informative] += centres[classes]
    return x, classes


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 2
    return [synthetic(rng, centres, n) for n in (200, 80, 120)]


def test_weighted_layers_probe_reads_the_informative_layer(data):
    (x, y), (vx, vy), (ex, ey) = data
    result = fit_head("weighted-layers", x, split("train", y), vx, split("valid", vy), ex, split("test", ey),
                      HeadSettings(max_epochs=150, patience=20))
    assert result.score.metric == "accuracy" and result.score.value > 0.9
    weights = np.asarray(result.layer_weights)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5) and weights[2] > 2 * np.delete(weights, 2).max()
    assert 1 <= result.best_epoch <= result.epochs <= 150
    # deterministic for the same seed
    again = fit_head("weighted-layers", x, split("train", y), vx, split("valid", vy), ex, split("test", ey),
                     HeadSettings(max_epochs=150, patience=20))
    assert again.layer_weights == result.layer_weights and again.score == result.score


def test_mlp_probe_separates_the_classes_and_stops_early(data):
    (x, y), (vx, vy), (ex, ey) = data
    result = fit_head("mlp", x[:, 2], split("train", y), vx[:, 2], split("valid", vy), ex[:, 2], split("test", ey),
                      HeadSettings(hidden=64, max_epochs=400, patience=10))
    assert result.score.value > 0.9 and result.layer_weights is None
    assert result.epochs == min(400, result.best_epoch + 10)  # stopped 10 epochs after its best (or at the end)
    noise = fit_head("mlp", x[:, 0], split("train", y), vx[:, 0], split("valid", vy), ex[:, 0], split("test", ey),
                     HeadSettings(hidden=64, max_epochs=100, patience=10))
    assert noise.score.value < 0.5  # four classes: chance is 0.25
    with pytest.raises(ValueError, match="one clip embedding per clip"):
        fit_head("mlp", x, split("train", y), vx, split("valid", vy), ex, split("test", ey))


def test_every_probe_fits_on_a_subset_of_the_training_clips(data):
    from beats_fairseq.probe import fit_probe

    (x, y), (vx, vy), (ex, ey) = data
    train, valid, test = split("train", y), split("valid", vy), split("test", ey)
    few = [int(np.flatnonzero(y == c)[k]) for c in range(4) for k in range(2)]  # 2 clips per class
    for probe, features in (("linear", (x[:, 2], vx[:, 2], ex[:, 2])), ("mlp", (x[:, 2], vx[:, 2], ex[:, 2])),
                            ("weighted-layers", (x, vx, ex))):
        (metric, value), weights = fit_probe(probe, features[0], train, features[2], test, features[1], valid,
                                             train_positions=few)
        assert metric == "accuracy" and value > 0.6, probe  # 8 labels suffice for well separated classes
        assert (weights is None) == (probe != "weighted-layers")
    with pytest.raises(ValueError, match="stops early on a validation split"):
        fit_probe("mlp", x[:, 2], train, ex[:, 2], test)
    with pytest.raises(IndexError):
        fit_probe("linear", x[:, 2], train, ex[:, 2], test, train_positions=[len(y)])
