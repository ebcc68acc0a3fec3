"""``attention_backend: flex`` (flex_attention + score_mod) computes what the SDPA float-mask path does.

torch has no flex_attention backward on CPU: gradients are compared on CUDA by
``benchmarks/gpu_check.sh``."""

import pytest
import torch

from conftest import tiny_beats_model as tiny_model


@pytest.mark.parametrize("gated", [True, False])
def test_flex_equals_sdpa(gated):
    """Masked pre-training forward (visible patches at their true positions, padding) and plain features."""
    source = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, 32000, dtype=torch.bool)
    padding[1, 25000:] = True
    results = {}
    for backend in ("sdpa", "flex"):
        model = tiny_model(attention_backend=backend, gru_rel_pos=gated).train()
        with torch.no_grad():
            out = model(source, padding, clip_ids=torch.tensor([0, 1]))
            features, _ = model.eval().extract_features(source, padding)
        results[backend] = (out["logits"], features)
    torch.testing.assert_close(results["flex"][0], results["sdpa"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results["flex"][1], results["sdpa"][1], atol=1e-5, rtol=1e-4)
    assert results["sdpa"][0].abs().max() > 0.1  # not trivially zero


def test_flex_fails_fast_where_it_cannot_run():
    source = 0.1 * torch.randn(1, 16000)
    with pytest.raises(ValueError, match="attention_dropout=0"):
        tiny_model(attention_backend="flex", attention_dropout=0.1).train()(source)
    with pytest.raises(ValueError, match="no backward on CPU"):
        tiny_model(attention_backend="flex").train()(source)
    with pytest.raises(ValueError, match="attention_backend='xla'"):
        tiny_model(attention_backend="xla")
