"""Command-line tools: beats-predict, beats-extract, beats-evaluate, beats-convert (and --help of every command)."""

import csv
import runpy
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from beats_fairseq.checkpoint import read_checkpoint
from beats_fairseq.loading import load
from beats_fairseq.cli import convert, evaluate, extract, manifest, predict
from beats_fairseq.cli.inference import num_patches
from beats_fairseq.data import read_audio, write_class_map
from conftest import assert_picture

TOOLS = {"beats-predict": predict, "beats-extract": extract, "beats-evaluate": evaluate,
         "beats-convert": convert, "beats-manifest": manifest}
FAST = ["--num-workers", "0", "--no-progress"]


def tone(seconds, sr=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * (200 + 150 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([wav, -wav], axis=1) if channels == 2 else wav


@pytest.fixture
def corpus(tmp_path):
    """Three clips (1.0 s, 0.8 s, 1.2 s stereo at 44.1 kHz) and a manifest of them."""
    audio = tmp_path / "audio"
    audio.mkdir()
    specs = [("a.wav", 1.0, 16000, 1), ("b.wav", 0.8, 16000, 1), ("c.flac", 1.2, 44100, 2)]
    lines = [str(audio)]
    for seed, (name, seconds, sr, channels) in enumerate(specs):
        sf.write(audio / name, tone(seconds, sr, channels, seed), sr)
        lines.append(f"{name}\t{read_audio(audio / name).numel()}")
    (tmp_path / "test.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def waveforms(corpus):
    return [read_audio(corpus / "audio" / n) for n in ("a.wav", "b.wav", "c.flac")]


def padded(wavs):
    longest = max(w.numel() for w in wavs)
    source = torch.zeros(len(wavs), longest)
    mask = torch.zeros(len(wavs), longest, dtype=torch.bool)
    for i, w in enumerate(wavs):
        source[i, : w.numel()] = w
        mask[i, w.numel():] = True
    return source, (mask if mask.any() else None)


def console_scripts():
    """``{command: "module:function"}`` of setup.py's console entry points."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    return dict(re.findall(r'"(beats-[\w-]+)=([\w.]+:\w+)"', text))


def test_every_console_script_has_help(capsys):
    import importlib

    scripts = console_scripts()
    assert set(TOOLS) <= set(scripts) and "beats-pipeline" in scripts and len(scripts) >= 9
    for prog, target in sorted(scripts.items()):
        module, function = target.split(":")
        with pytest.raises(SystemExit) as exit_info:
            getattr(importlib.import_module(module), function)(["--help"])
        assert exit_info.value.code == 0, prog
        out = capsys.readouterr().out
        assert f"usage: {prog}" in out and "options:" in out, (prog, out[:300])


def test_commands_that_run_a_model_over_audio_share_their_flags():
    """The shared inference flags (``cli/common.add_inference_args``) mean the same in every command."""
    from beats_fairseq.cli import precompute_labels, probe

    shared = {"--device": "auto", "--batch-size": None, "--num-workers": 2, "--max-seconds": None,
              "--no-progress": False, "--quiet": False}
    for command in (predict, extract, evaluate, probe, precompute_labels):
        options = {o: a for a in command.build_parser()._actions for o in a.option_strings}
        for flag, default in shared.items():
            if command is precompute_labels and flag == "--max-seconds":
                continue  # labels must cover whole clips
            assert flag in options, f"{command.__name__} has no {flag}"
            if default is not None:
                assert options[flag].default == default, (command.__name__, flag)
        assert "--progress" not in options


def test_probe_runs_with_the_shared_flags(corpus, oracle, capsys):
    from beats_fairseq.cli import probe

    (corpus / "train.tsv").write_text((corpus / "test.tsv").read_text())
    for split in ("train", "test"):
        (corpus / f"{split}.lbl").write_text("0\n1\n0\n")
    args = ["--data", str(corpus), "--encoder", f"small={oracle.dir / 'beats_small.pt'}", "--no-random-baseline",
            "--device", "auto", "--batch-size", "2", *FAST]
    assert probe.main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "| small | 1.0000 |" in captured.out and "probe small" not in captured.err  # --quiet: no INFO lines
    assert probe.main(args) == 0
    assert "probe small: accuracy 1.0000" in capsys.readouterr().err
    assert probe.main([*args, "--device", "nonsense"]) == 1  # the shared --device check
    # the probes trained with early stopping on --valid-split (here the same 3 clips)
    (corpus / "valid.tsv").write_text((corpus / "test.tsv").read_text())
    (corpus / "valid.lbl").write_text("0\n1\n0\n")
    for kind in ("weighted-layers", "mlp"):
        assert probe.main([*args, "--quiet", "--probe", kind]) == 0
        out = capsys.readouterr().out
        assert f"| encoder | {kind} probe accuracy (test) |" in out and "| small | " in out
    # several probes read the same features: one table each
    assert probe.main([*args, "--quiet", "--probe", "mlp", "--probe", "weighted-layers", "--layer", "0"]) == 0
    out = capsys.readouterr().out
    assert out.index("| encoder | mlp probe") < out.index("| encoder | weighted-layers probe")
    assert probe.main([*args, "--probe", "weighted-layers", "--layer", "0"]) == 1
    assert "weighted-layers reads them all" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["folder", "audioset", "esc50", "spcv2"])
def test_manifest_subcommand_help(command, capsys):
    with pytest.raises(SystemExit):
        manifest.main([command, "--help"])
    assert f"usage: beats-manifest {command}" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy: module already imported
@pytest.mark.parametrize("module", ["predict", "extract", "evaluate", "convert", "manifest"])
def test_python_m_entry_point(module, monkeypatch, capsys):
    """``python -m beats_fairseq.cli.<module>`` (run in-process with runpy: no interpreter start-up)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"beats_fairseq.cli.{module}", run_name="__main__")
    assert exit_info.value.code == 0 and "usage: beats-" in capsys.readouterr().out


def read_predictions(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_predict_official_finetuned_files_and_manifest(corpus, oracle, capsys):
    ckpt = str(oracle.dir / "beats_small_finetuned.pt")
    files = [str(corpus / "audio" / n) for n in ("a.wav", "b.wav", "c.flac")]
    out = corpus / "pred.tsv"
    assert predict.main([ckpt, *files, "--manifest", str(corpus / "test.tsv"), "--top-k", "3",
                         "--batch-size", "2", "--output", str(out), *FAST]) == 0
    stdout = capsys.readouterr().out
    model = load(ckpt)
    label_dict = read_checkpoint(ckpt)["label_dict"]
    wavs = waveforms(corpus) * 2  # files, then the same clips from the manifest
    with torch.inference_mode():
        probs = torch.cat([model.extract_features(*padded(wavs[i:i + 2]))[0] for i in range(0, 6, 2)])
    rows = read_predictions(out)
    assert len(rows) == 6 * 3
    keys = files + ["a.wav", "b.wav", "c.flac"]
    for clip, key in enumerate(keys):
        mine = [r for r in rows if r["path"] == key]
        top = probs[clip].topk(3)
        assert [int(r["index"]) for r in mine] == top.indices.tolist()
        np.testing.assert_allclose([float(r["score"]) for r in mine], top.values.numpy(), rtol=0, atol=1e-7)
        assert [r["display_name"] for r in mine] == [label_dict[i] for i in top.indices.tolist()]
        assert key in stdout
    assert "/m/oracle_class_" in stdout


def test_predict_class_map_names_by_mid(corpus, oracle, capsys):
    ckpt = str(oracle.dir / "beats_small_finetuned.pt")
    names = [f"Oracle sound {i}" for i in range(5)]
    write_class_map(corpus / "classes.csv", names[::-1], [f"/m/oracle_class_{i}" for i in range(5)][::-1])
    assert predict.main([ckpt, str(corpus / "audio" / "a.wav"), "--class-map", str(corpus / "classes.csv"),
                         "--top-k", "5", *FAST]) == 0
    out = capsys.readouterr().out
    for i in range(5):
        assert f"Oracle sound {i}  [/m/oracle_class_{i}]  (#{i})" in out


def test_predict_errors(corpus, oracle, capsys):
    assert predict.main([str(oracle.dir / "beats_small.pt"), str(corpus / "audio" / "a.wav"), *FAST]) == 1
    assert "not a fine-tuned classifier" in capsys.readouterr().err
    ckpt = str(oracle.dir / "beats_small_finetuned.pt")
    (corpus / "audio" / "broken.wav").write_bytes(b"not audio")
    bad = [str(corpus / "audio" / "a.wav"), str(corpus / "audio" / "broken.wav")]
    assert predict.main([ckpt, *bad, *FAST]) == 1
    assert "broken.wav" in capsys.readouterr().err
    assert predict.main([ckpt, *bad, "--skip-bad", *FAST]) == 0
    captured = capsys.readouterr()
    assert "a.wav" in captured.out and "skipped 1 of 2" in captured.err


def test_extract_shapes_alignment_and_values(corpus, oracle):
    ckpt = str(oracle.dir / "beats_small.pt")
    out = corpus / "feats"
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--batch-size", "2", *FAST]) == 0
    wavs = waveforms(corpus)
    counts = [num_patches(w.numel(), 16) for w in wavs]
    clip, patch = np.load(out / "clip_features.npy"), np.load(out / "patch_features.npy")
    offsets = np.load(out / "patch_offsets.npy")
    assert clip.shape == (3, 64) and patch.shape == (sum(counts), 64) and clip.dtype == np.float32
    assert offsets.tolist() == [0, counts[0], counts[0] + counts[1], sum(counts)]
    index = (out / "index.tsv").read_text().splitlines()
    assert index[0].split("\t") == ["row", "entry", "path", "num_samples", "patch_offset", "num_patches"]
    assert [line.split("\t")[2] for line in index[1:]] == ["a.wav", "b.wav", "c.flac"]
    assert [int(line.split("\t")[5]) for line in index[1:]] == counts
    for i in range(3):
        np.testing.assert_allclose(clip[i], patch[offsets[i]:offsets[i + 1]].mean(0), rtol=1e-5, atol=1e-6)
    model = load(ckpt)
    with torch.inference_mode():  # clip c is alone in its batch: no padding, same as the model on the clip
        expected, _ = model.extract_features(wavs[2][None])
    np.testing.assert_allclose(patch[offsets[2]:], expected[0].numpy(), rtol=1e-5, atol=1e-5)

    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), *FAST]) == 1  # exists
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--layer", "1", "--overwrite",
                         "--outputs", "patch", "--batch-size", "2", *FAST]) == 0
    np.testing.assert_array_equal(np.load(out / "patch_features.npy"), patch)  # layer 1 = last of 2
    assert not (out / "clip_features.npy").exists()
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--layer", "0", "--overwrite",
                         "--batch-size", "2", *FAST]) == 0
    with torch.inference_mode():
        layer0, _ = model.backbone.extract_features(wavs[2][None], layer=0)
    np.testing.assert_allclose(np.load(out / "patch_features.npy")[offsets[2]:], layer0[0].numpy(), atol=1e-5, rtol=1e-5)
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--layer", "2", "--overwrite", *FAST]) == 1
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--outputs", "labels",
                         "--overwrite", *FAST]) == 1  # no tokenizer


def test_extract_tokenizer_labels_only_when_asked(corpus, oracle, capsys):
    pytest.importorskip("beats_fairseq.models.beats_tokenizer")
    ckpt = str(oracle.dir / "tokenizer_small.pt")
    out = corpus / "tok"
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--batch-size", "1", *FAST]) == 0
    assert not (out / "labels.npy").exists()  # a tokenizer checkpoint gives its features unless labels are asked for
    assert extract.main([ckpt, str(corpus / "test.tsv"), "--out", str(out), "--batch-size", "1", "--overwrite",
                         "--outputs", "clip,patch,labels", *FAST]) == 0
    labels, offsets = np.load(out / "labels.npy"), np.load(out / "patch_offsets.npy")
    assert labels.dtype == np.int64 and labels.shape == (offsets[-1],)
    assert np.load(out / "patch_features.npy").shape[0] == offsets[-1]
    tokenizer = load(ckpt)
    for i, wav in enumerate(waveforms(corpus)):
        expected = tokenizer.extract_labels(wav[None]).reshape(-1)
        np.testing.assert_array_equal(labels[offsets[i]:offsets[i + 1]], expected.numpy())
    # --tokenizer asks for labels with auto outputs, and contradicts outputs without labels
    encoder = str(oracle.dir / "beats_small.pt")
    assert extract.main([encoder, str(corpus / "test.tsv"), "--out", str(out), "--tokenizer", ckpt, "--overwrite",
                         "--batch-size", "1", *FAST]) == 0
    np.testing.assert_array_equal(np.load(out / "labels.npy"), labels)
    capsys.readouterr()
    assert extract.main([encoder, str(corpus / "test.tsv"), "--out", str(out), "--tokenizer", ckpt, "--overwrite",
                         "--outputs", "clip", *FAST]) == 1
    assert "--tokenizer is only used for labels" in capsys.readouterr().err


def write_labelled_manifest(corpus, lines, ext):
    (corpus / f"test.{ext}").write_text("".join(line + "\n" for line in lines))
    return str(corpus / f"test.{ext}")


def test_evaluate_map_and_accuracy(corpus, oracle, capsys):
    from sklearn.metrics import average_precision_score

    ckpt = str(oracle.dir / "beats_small_finetuned.pt")
    model = load(ckpt)
    with torch.inference_mode():
        probs = torch.cat([model.extract_features(*padded(waveforms(corpus)[i:i + 2]))[0] for i in (0, 2)]).numpy()
    mlbl = write_labelled_manifest(corpus, ["0,1", "1", "3"], "mlbl")
    table = corpus / "ap.csv"
    assert evaluate.main([ckpt, str(corpus / "test.tsv"), mlbl, "--csv", str(table), "--batch-size", "2",
                          "--scores", str(corpus / "scores.npy"), *FAST]) == 0
    np.testing.assert_allclose(np.load(corpus / "scores.npy"), probs, atol=1e-7)
    rows = list(csv.DictReader(open(table)))
    assert [r["num_positives"] for r in rows] == ["1", "2", "0", "1", "0"]
    assert rows[2]["ap"] == "" and rows[0]["display_name"] == "/m/oracle_class_0"
    targets = np.array([[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    expected = [average_precision_score(targets[:, c], probs[:, c]) for c in (0, 1, 3)]
    assert [float(rows[c]["ap"]) for c in (0, 1, 3)] == pytest.approx(expected, abs=1e-6)
    summary = capsys.readouterr().out
    value = float(summary.split("mAP = ")[1].split()[0])
    assert 0.0 <= value <= 1.0 and value == pytest.approx(np.mean(expected), abs=1e-4)

    # single-label, class map in another order than the model's label_dict: matched by MID
    mids = [f"/m/oracle_class_{i}" for i in (4, 3, 2, 1, 0)]
    write_class_map(corpus / "classes.csv", [f"name {m[-1]}" for m in mids], mids)
    lbl = write_labelled_manifest(corpus, ["4", "3", "0"], "lbl")
    assert evaluate.main([ckpt, str(corpus / "test.tsv"), lbl, "--class-map", str(corpus / "classes.csv"),
                          "--csv", str(table), "--batch-size", "2", "--plot", str(corpus / "per_class.png"), *FAST]) == 0
    assert_picture(corpus / "per_class.png", min_width=500, min_height=150)
    rows = list(csv.DictReader(open(table)))
    assert [r["mid"] for r in rows] == mids and "accuracy" in rows[0]
    predicted = probs[:, ::-1].argmax(1)
    truth = np.array([4, 3, 0])
    assert [r["num_positives"] for r in rows] == ["1", "0", "0", "1", "1"]
    for c in (0, 3, 4):
        assert float(rows[c]["accuracy"]) == float(predicted[truth == c][0] == c)
    value = float(capsys.readouterr().out.split("accuracy = ")[1].split()[0])
    assert value == pytest.approx(np.mean(predicted == truth), abs=1e-4)

    bad = write_labelled_manifest(corpus, ["0", "7", "1"], "lbl")
    assert evaluate.main([ckpt, str(corpus / "test.tsv"), bad, "--csv", str(table), *FAST]) == 1
    assert "unknown class id 7" in capsys.readouterr().err
