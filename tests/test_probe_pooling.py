"""Clip pooling of the probes (``beats_fairseq.probe.pool``)."""

import pytest
import torch

from beats_fairseq.probe import pool


def test_bands_pooling_is_the_mean_and_std_over_time_of_each_band_and_skips_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 5 * 4, 3)  # 5 time steps x 4 bands, time-major
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1, 12:] = True  # clip 2: its last 2 time steps are padding
    out = pool(x, mask, "bands", bands=4)
    assert out.shape == (2, 2 * 4 * 3)
    for clip, steps in ((0, 5), (1, 3)):
        grid = x[clip, : steps * 4].reshape(steps, 4, 3)
        expected = torch.cat([grid.mean(0).flatten(), grid.std(0, unbiased=False).flatten()])
        torch.testing.assert_close(out[clip], expected)


def test_bands_pooling_keeps_where_in_frequency_a_feature_is():
    """Two clips that differ only by which band carries the energy: equal under mean pooling, not under bands."""
    low, high = torch.zeros(1, 6 * 8, 2), torch.zeros(1, 6 * 8, 2)
    low.view(1, 6, 8, 2)[:, :, 0, 0] = 1.0
    high.view(1, 6, 8, 2)[:, :, 7, 0] = 1.0
    for pooling in ("mean", "mean+std"):
        torch.testing.assert_close(pool(low, None, pooling), pool(high, None, pooling))
    assert not torch.allclose(pool(low, None, "bands", 8), pool(high, None, "bands", 8))


def test_bands_pooling_refuses_patches_that_are_not_whole_time_steps():
    with pytest.raises(ValueError, match="not whole time steps of 8"):
        pool(torch.zeros(1, 12, 2), None, "bands", bands=8)
