"""Parity of the front end and encoder with the official BEATs code (tests/data/oracle)."""

import pytest
import torch

from beats_fairseq.modules import fbank as fb
from beats_fairseq.modules.encoder import relative_position_bucket
from oracle_checks import FBANK_ATOL, PARITY_TOL, build_backbone, feature_check, gradient_check


def test_fbank_matches_oracle_and_torchaudio(oracle):
    inputs, ref = oracle("inputs"), oracle("fbank")
    fbank = fb.compute_fbank(inputs["source"])
    torch.testing.assert_close(fbank, ref["fbank"], atol=FBANK_ATOL, rtol=0)
    torch.testing.assert_close(fbank, fb.reference_fbank(inputs["source"]), atol=FBANK_ATOL, rtol=0)
    raw = fb.compute_fbank(inputs["source"], fbank_mean=0.0, fbank_std=0.5)
    torch.testing.assert_close(raw, ref["fbank_unnormalized"], atol=FBANK_ATOL * 2 * fb.FBANK_STD, rtol=0)
    assert fb.num_frames(48000) == ref["fbank"].shape[1] == 298


def test_fbank_ignores_autocast_and_half_input(oracle):
    source = oracle("inputs")["source"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fbank = fb.compute_fbank(source.bfloat16().float())
    assert fbank.dtype == torch.float32


def test_padding_masks_are_bit_exact(oracle):
    inputs, ref = oracle("inputs"), oracle("fbank")
    fbank = torch.zeros(inputs["padding_mask"].size(0), 298, fb.NUM_MEL_BINS)  # 18 x 8 = 144 patches
    frames, patches = fb.padding_masks(inputs["padding_mask"], fbank)
    assert torch.equal(frames, ref["frame_padding_mask"])
    assert torch.equal(patches, ref["patch_padding_mask"])
    assert patches[1].nonzero().flatten().tolist() == list(range(125, 144))


def test_relative_position_buckets(oracle):
    pos = torch.arange(144)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], 320, 800)
    assert torch.equal(buckets, oracle("fbank")["rel_pos_bucket"].long())


def test_patchify_is_time_major():
    fbank = torch.arange(2 * 40 * 32, dtype=torch.float32).view(2, 40, 32)
    patches = fb.patchify(fbank, 16)
    assert patches.shape == (2, 2 * 2, 256)
    # patch n = t * 2 + f: patch 1 is time 0, frequency 1 -> bins 16..31 of frames 0..15
    torch.testing.assert_close(patches[0, 1].view(16, 16), fbank[0, :16, 16:32])
    torch.testing.assert_close(patches[1, 2].view(16, 16), fbank[1, 16:32, :16])


@pytest.mark.parametrize("masked", [True, False])
def test_features_and_intermediates(oracle, masked):
    inputs, ref = oracle("inputs"), oracle("model_outputs")
    model = build_backbone(oracle("beats_small"))
    captured = {}
    names = {
        "patch_feats_ln": model.layer_norm,
        "post_extract_proj": model.post_extract_proj,
        "encoder_input_after_posconv_ln": model.encoder.layer_norm,
        "layer0_out": model.encoder.layers[0],
        "layer1_out": model.encoder.layers[1],
    }
    for key, module in names.items():
        module.register_forward_hook(lambda m, i, o, key=key: captured.__setitem__(key, o))
    with torch.no_grad():
        feats, mask = model.extract_features(inputs["source"], inputs["padding_mask"] if masked else None)
    if masked:
        torch.testing.assert_close(feats, ref["features"], **PARITY_TOL)
        assert torch.equal(mask, ref["padding_mask"])
        for key in names:
            torch.testing.assert_close(captured[key], ref["intermediates"][key], **PARITY_TOL)
    else:
        torch.testing.assert_close(feats, ref["features_no_mask"], **PARITY_TOL)
        assert mask is None
        # without a mask clip 1's padded tail takes part in attention, so its features differ
        assert (feats[1] - ref["features"][1]).abs().max() > 1e-3


def test_gradients_with_layerwise_decay(oracle):
    result = gradient_check(oracle)
    assert result["parameters_compared"] > 10
    assert result["loss"] <= 1 and result["gradients"] <= 1, result


def test_feature_check_of_the_gpu_script(oracle):
    """The check ``benchmarks/gpu_check.py`` runs on CUDA passes on CPU (and fails on a changed model)."""
    result = feature_check(oracle)
    assert result["features"] <= 1 and result["features_no_mask"] <= 1 and result["padding_mask_exact"], result
    import oracle_checks

    changed = oracle_checks.build_backbone
    try:
        def nudged(ck):
            model = changed(ck)
            with torch.no_grad():
                model.encoder.layers[1].fc2.weight.mul_(1.01)
            return model
        oracle_checks.build_backbone = nudged
        assert oracle_checks.feature_check(oracle)["features"] > 1
    finally:
        oracle_checks.build_backbone = changed


def test_layerwise_decay_scales_front_end_gradient(oracle):
    """Decay 0.6 over 2 layers: front-end grads are 0.36x, layer-0 grads 0.6x those without decay."""
    inputs = oracle("inputs")
    grads = {}
    for ratio in (0.6, 1.0):
        ck = oracle("beats_small")
        ck["cfg"]["layer_wise_gradient_decay_ratio"] = ratio
        model = build_backbone(ck)
        feats, _ = model.extract_features(inputs["source"])
        feats.pow(2).mean().backward()
        grads[ratio] = (model.patch_embedding.weight.grad, model.encoder.layers[0].fc1.weight.grad)
    torch.testing.assert_close(grads[0.6][0], 0.36 * grads[1.0][0], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(grads[0.6][1], 0.6 * grads[1.0][1], rtol=1e-4, atol=1e-9)


def test_forward_draws_no_numpy_random_numbers(oracle):
    import numpy as np

    model = build_backbone(oracle("beats_small")).train()
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    model.extract_features(oracle("inputs")["source"])
    assert np.array_equal(before, np.random.get_state()[1])
