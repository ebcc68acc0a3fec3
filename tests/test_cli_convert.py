"""beats-convert: official <-> fairseq round trips on the oracle checkpoints give identical
tensors and identical outputs; converted files load with fairseq and ``beats_fairseq.load``."""

import pytest
import torch
from fairseq import checkpoint_utils

from beats_fairseq.checkpoint import is_official, read_checkpoint
from beats_fairseq.loading import load
from beats_fairseq.cli import convert
from beats_fairseq.cli.inference import load_model
from oracle_checks import PARITY_TOL, PROBABILITY_ATOL

ORACLES = {
    "beats_small": ("beats_encoder", "model_outputs"),
    "beats_small_finetuned": ("beats_classifier", "finetuned_outputs"),
    "tokenizer_small": ("beats_tokenizer", "tokenizer_outputs"),
}


def needs_tokenizer(name):
    if name.startswith("tokenizer"):
        pytest.importorskip("beats_fairseq.models.beats_tokenizer", reason="the tokenizer model has not landed yet")


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def outputs(model, inputs):
    source, mask = inputs["source"], inputs["padding_mask"]
    with torch.inference_mode():
        out = {"features": model.backbone.extract_features(source, mask)[0]}
        if hasattr(model, "extract_labels"):
            out["labels"] = model.extract_labels(source, mask)
        elif hasattr(model, "head"):
            out["probs"] = model.extract_features(source, mask)[0]
    return out


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_official_round_trip(name, oracle, tmp_path):
    needs_tokenizer(name)
    registered, reference = ORACLES[name]
    src = oracle.dir / f"{name}.pt"
    project, back = tmp_path / "project.pt", tmp_path / "back.pt"
    assert convert.main([str(src), str(project), "--quiet"]) == 0
    assert convert.main([str(project), str(back), "--quiet"]) == 0

    original, state, returned = read_checkpoint(src), read_checkpoint(project), read_checkpoint(back)
    assert not is_official(state) and is_official(returned)
    assert state["cfg"]["model"]["_name"] == registered and state["cfg"]["task"]["_name"] == "beats_pretraining"
    assert_same_tensors(original["model"], returned["model"])
    assert returned.get("label_dict") == original.get("label_dict")
    for key, value in returned["cfg"].items():  # fields written back keep the official values
        assert original["cfg"].get(key, value) == value, key
    assert not any(k.startswith("_") for k in returned["cfg"])

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(project)])
    via_fairseq = models[0].eval()
    assert type(via_fairseq).__name__ == type(load(str(project))).__name__
    assert_same_tensors(via_fairseq.state_dict(), state["model"])

    inputs = oracle("inputs")
    first, second, third = outputs(load(str(src)), inputs), outputs(load_model(str(project), "cpu"), inputs), \
        outputs(load(str(back)), inputs)
    for key in first:
        assert torch.equal(first[key], second[key]) and torch.equal(first[key], third[key]), key
    ref = oracle(reference)
    if "labels" in first:
        assert torch.equal(first["labels"].reshape(-1), ref["labels"])
    elif "probs" in first:
        torch.testing.assert_close(first["probs"], ref["probs"], atol=PROBABILITY_ATOL, rtol=0)
    else:
        torch.testing.assert_close(first["features"], ref["features"], **PARITY_TOL)


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_project_round_trip_and_determinism(name, oracle, tmp_path):
    needs_tokenizer(name)
    src = oracle.dir / f"{name}.pt"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    assert convert.main([str(src), str(first), "--quiet"]) == 0
    assert convert.main([str(src), str(second), "--quiet"]) == 0
    assert first.read_bytes() == second.read_bytes()  # nothing random or time-dependent is written
    official, again = tmp_path / "official.pt", tmp_path / "again.pt"
    assert convert.main([str(first), str(official), "--to", "official", "--quiet"]) == 0
    assert convert.main([str(official), str(again), "--to", "fairseq", "--verify", "--quiet"]) == 0
    a, b = read_checkpoint(first), read_checkpoint(again)
    assert_same_tensors(a["model"], b["model"])
    assert a["cfg"] == b["cfg"] and a.get("label_dict") == b.get("label_dict")
    if name == "beats_small_finetuned":
        assert load_model(str(again), "cpu").label_dict == read_checkpoint(src)["label_dict"]


def test_pretraining_checkpoint_keeps_encoder_only(tmp_path):
    from beats_fairseq.models.beats import BeatsConfig, BeatsModel

    torch.manual_seed(0)
    cfg = BeatsConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                      encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4, label_predictor_layers=1,
                      codebook_size=16, codebook_dim=8, dropout=0.0, attention_dropout=0.0)
    model = BeatsModel(cfg).eval()
    path, official = tmp_path / "checkpoint_last.pt", tmp_path / "official.pt"
    torch.save(convert.fairseq_checkpoint(model, "test"), path)
    assert type(load(str(path))).__name__ == "BeatsModel"
    assert convert.main([str(path), str(official), "--verify", "--quiet"]) == 0
    state = read_checkpoint(official)
    backbone = {k: v for k, v in model.backbone.state_dict().items()}
    assert_same_tensors(state["model"], backbone)
    assert state["cfg"]["finetuned_model"] is False and "label_dict" not in state


def test_convert_refuses_bad_requests(oracle, tmp_path, capsys):
    src = str(oracle.dir / "beats_small.pt")
    assert convert.main([src, str(tmp_path / "x.pt"), "--to", "official"]) == 1
    assert "already in the official format" in capsys.readouterr().err
    (tmp_path / "exists.pt").write_bytes(b"")
    assert convert.main([src, str(tmp_path / "exists.pt")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert convert.main([str(tmp_path / "missing.pt"), str(tmp_path / "y.pt")]) == 1


def test_single_label_classifier_export_warns_and_keeps_logits(tmp_path, capsys):
    from beats_fairseq.models.beats_classifier import BeatsClassifierConfig, BeatsClassifierModel

    torch.manual_seed(0)
    cfg = BeatsClassifierConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4, num_classes=3,
                                multilabel=False, fbank_mean=14.0)
    path, official = tmp_path / "ft.pt", tmp_path / "official.pt"
    torch.save(convert.fairseq_checkpoint(BeatsClassifierModel(cfg).eval(), "test"), path)
    assert convert.main([str(path), str(official)]) == 0
    err = capsys.readouterr().err
    assert "single-label (softmax)" in err and "fbank_mean=14.0" in err
    assert read_checkpoint(official)["cfg"]["predictor_class"] == 3


@pytest.mark.parametrize("label_dict", ["full", "partial", "string keys"])
def test_library_and_commands_give_a_classifier_the_same_label_dict(label_dict, oracle, tmp_path):
    """``beats_fairseq.load`` and the commands' ``load_model`` read an official classifier and its
    conversion with the same ``label_dict``, hence the same class names."""
    from beats_fairseq.cli.inference import class_table

    state = read_checkpoint(oracle.dir / "beats_small_finetuned.pt")
    full = dict(state["label_dict"])
    state["label_dict"] = {"full": full, "partial": {i: m for i, m in full.items() if i != 2},
                           "string keys": {str(i): m for i, m in full.items()}}[label_dict]
    official, converted = tmp_path / "official.pt", tmp_path / "converted.pt"
    torch.save(state, official)
    assert convert.main([str(official), str(converted), "--quiet"]) == 0
    models = [load(str(official)), load_model(str(official), "cpu"), load(str(converted)),
              load_model(str(converted), "cpu")]
    assert all(m.label_dict == models[0].label_dict for m in models)
    assert models[0].label_dict is not None
    names = [class_table(m)[1] for m in models]
    assert all(n == names[0] for n in names)
    if label_dict == "partial":
        assert names[0] == ["/m/oracle_class_0", "/m/oracle_class_1", "", "/m/oracle_class_3", "/m/oracle_class_4"]
    else:
        assert names[0] == [full[i] for i in range(len(full))]
