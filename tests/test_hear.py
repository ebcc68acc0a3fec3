"""beats_fairseq.hear: the HEAR 2021 API, checked with the official hearvalidator."""

import sys
import types

import pytest
import torch

import beats_fairseq.hear as hear


@pytest.fixture(scope="module")
def model(oracle):
    return hear.load_model(str(oracle.dir / "beats_small.pt"))


def validator_module(monkeypatch):
    """hearvalidator.validate imports tensorflow but uses it only for TensorFlow models:
    give it a stand-in whose ``Module`` no torch model is an instance of (for this test only)."""
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(Module=type("Module", (), {})))
    monkeypatch.delitem(sys.modules, "hearvalidator.validate", raising=False)
    try:
        from hearvalidator import validate
    except ImportError:
        pytest.fail("hearvalidator is not installed: run scripts/setup_env.sh (pip install --no-deps hearvalidator)")
    return validate


def test_hear_validator_passes(oracle, monkeypatch):
    validate = validator_module(monkeypatch)
    validate.ValidateModel("beats_fairseq.hear", str(oracle.dir / "beats_small.pt"), device="cpu")()


def test_timestamps_regular_centred_and_cover_the_audio(model):
    assert model.sample_rate == 16000 and model.timestamp_embedding_size == model.scene_embedding_size == 64
    torch.manual_seed(0)
    for seconds in (0.5, 2.0, 3.74, 13.3):  # 13.3 s runs in chunks
        samples = int(seconds * 16000)
        audio = torch.rand(3, samples) * 2 - 1
        emb, ts = hear.get_timestamp_embeddings(audio, model)
        assert emb.dtype == ts.dtype == torch.float32
        assert emb.shape[:2] == ts.shape and emb.shape[0] == 3 and emb.shape[2] == 64
        steps = torch.diff(ts)
        assert torch.all((steps - 160.0).abs() < 1e-3)
        assert ts[0, 0].item() == pytest.approx(87.5)
        length_ms = samples / 16
        assert length_ms - 2 * 160 <= ts[0, -1].item() <= length_ms


def test_scene_embedding_is_the_clip_mean(model, oracle):
    from beats_fairseq import load

    audio = torch.rand(2, 48000) * 2 - 1
    scene = hear.get_scene_embeddings(audio, model)
    with torch.no_grad():
        feats, _ = load(str(oracle.dir / "beats_small.pt")).extract_features(audio)
    assert scene.shape == (2, 64) and scene.dtype == torch.float32
    assert torch.allclose(scene, feats.mean(dim=1), atol=1e-5)


def test_layer_and_concat_options(oracle):
    wide = hear.load_model(str(oracle.dir / "beats_small.pt"), layer=0, reduce="concat")
    assert wide.timestamp_embedding_size == 8 * 64
    emb, _ = hear.get_timestamp_embeddings(torch.rand(1, 32000), wide)
    assert emb.shape[2] == 8 * 64
    with pytest.raises(ValueError, match="layer"):
        hear.load_model(str(oracle.dir / "beats_small.pt"), layer=5)
    with pytest.raises(ValueError, match="checkpoint path"):
        hear.load_model()
