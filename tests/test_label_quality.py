"""Tokenizer diagnostics: purity and NMI of patch labels against clip classes, and the constant baseline
of the distillation cosine."""

import numpy as np
import pytest
import torch

from beats_fairseq.label_quality import (
    cosine_baseline,
    label_agreement,
    normalized_mutual_info,
    purity,
)


def test_labels_that_name_the_class_score_one_and_unrelated_labels_near_zero():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 10, size=400)
    # each clip has 20 patches; perfect: a code per class (renamed, and split into 2 codes per class)
    perfect = [np.full(20, 7 * c + 3) for c in classes]
    split = [np.where(rng.random(20) < 0.5, 2 * c, 2 * c + 1) for c in classes]
    random = [rng.integers(0, 16, size=20) for _ in classes]
    good, halves, bad = (label_agreement(codes, classes) for codes in (perfect, split, random))
    assert good.purity == pytest.approx(1.0) and good.nmi == pytest.approx(1.0)
    assert halves.purity == pytest.approx(1.0) and 0.7 < halves.nmi < 1.0  # pure, but more codes than classes
    assert bad.purity < 0.15 and bad.nmi < 0.02
    for result in (good, halves, bad):  # shuffled classes: chance (10 classes, 400 clips), whatever the labels
        assert result.purity_chance < 0.25 and result.nmi_chance < 0.1
        assert result.patches == 8000 and result.clips == 400


def test_purity_and_nmi_of_a_small_table():
    codes = np.array([0, 0, 0, 1, 1, 1])
    classes = np.array([0, 0, 1, 1, 1, 1])
    assert purity(codes, classes) == pytest.approx(5 / 6)
    # NMI from the entropies: H(code) = ln 2, H(class) = H(1/3, 2/3), H(joint) = H(2/6, 1/6, 3/6)
    h = lambda *p: -sum(x * np.log(x) for x in p)  # noqa: E731
    mutual = h(0.5, 0.5) + h(1 / 3, 2 / 3) - h(2 / 6, 1 / 6, 3 / 6)
    assert normalized_mutual_info(codes, classes) == pytest.approx(mutual / ((h(0.5, 0.5) + h(1 / 3, 2 / 3)) / 2))
    assert normalized_mutual_info(np.zeros(4), np.zeros(4)) == 1.0
    with pytest.raises(ValueError, match="one class per patch"):
        purity(codes, classes[:3])


class ConstantPlusNoise:
    """A teacher whose targets are a fixed direction plus noise of a given size."""

    def __init__(self, noise: float):
        self.noise, self.direction = noise, torch.nn.functional.normalize(torch.ones(8), dim=0)

    def __call__(self, source):
        generator = torch.Generator().manual_seed(int(source.abs().sum() * 1000) % 2**31)
        targets = self.direction + self.noise * torch.randn(source.size(0), 5, 8, generator=generator)
        return targets, None


def test_constant_baseline_is_high_for_nearly_constant_targets_and_low_for_noise(demo_data):
    manifest = str(demo_data / "train.tsv")
    valid = str(demo_data / "valid.tsv")
    near, noise = (cosine_baseline(ConstantPlusNoise(s), manifest, valid) for s in (0.01, 10.0))
    assert near.cosine > 0.99 and abs(noise.cosine) < 0.2
    assert near.train_patches > 0 and near.valid_patches > 0


def test_split_agreement_labels_every_patch_of_every_clip_as_in_training(demo_data):
    from beats_fairseq.evaluation import read_splits
    from beats_fairseq.label_quality import random_projection_labeller, split_agreement
    from beats_fairseq.data.label_store import num_patches
    from conftest import tiny_beats_model

    model = tiny_beats_model().eval()
    train = read_splits(str(demo_data), ["train"])[0]

    labeller = random_projection_labeller(model.cfg)
    source = torch.randn(2, 16000)
    training = model.compute_labels(source, None, model.backbone.frontend(source).fbank)
    assert torch.equal(labeller(source), training)  # the labels iter1 pre-training learns from

    result = split_agreement(labeller, train, max_samples=16000)
    assert result.clips == len(train) and result.patches == len(train) * num_patches(16000)
    assert 0 < result.nmi < 1 and 0 < result.purity < 1
