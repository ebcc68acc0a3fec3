"""Tests of beats_fairseq.data: manifests, labels, audio reading, AudioDataset, demo corpus."""

import hashlib
import logging
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from beats_fairseq.data import (MIN_SAMPLES_ONE_PATCH, AudioDataset, AudioReadError, ManifestError, demo,
                                read_audio, read_class_map, read_label_file, read_manifest, write_class_map,
                                write_manifest)


def _wav(path, x, sr=16000, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, dtype=np.float32), sr, subtype=subtype)
    return path


# --------------------------------------------------------------------------- manifests
def test_read_and_write_manifest(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "train.tsv").write_text("../audio\na.wav\t48000\tignored\nb/c.wav\t2800\n")
    m = read_manifest(tmp_path / "m" / "train.tsv")  # relative root: relative to the manifest's dir
    assert m.root == str(tmp_path / "audio") and m.manifest_path == str(tmp_path / "m" / "train.tsv")
    assert m.paths == ["a.wav", "b/c.wav"] and len(m) == 2
    assert m.sizes.dtype == np.int64 and m.sizes.tolist() == [48000, 2800]
    assert m.abspath(1) == str(tmp_path / "audio" / "b" / "c.wav")
    assert write_manifest(tmp_path / "x" / "a.tsv", "/data", [("a.wav", 5), ("b.wav", np.int64(7))]) == 2
    assert (tmp_path / "x" / "a.tsv").read_text() == "/data\na.wav\t5\nb.wav\t7\n"
    with pytest.raises(ValueError, match="num_samples"):
        write_manifest(tmp_path / "b.tsv", "/data", [("a.wav", -1)])


READERS = {
    "tsv": read_manifest,
    "lbl": lambda p: read_label_file(p, 2, num_classes=3),
    "csv": read_class_map,
}


@pytest.mark.parametrize("kind,text,line,what", [
    ("tsv", "", 1, "empty manifest"),
    ("tsv", "\na.wav\t10\n", 1, "empty manifest"),
    ("tsv", "/root\n", 2, "no 'relpath"),
    ("tsv", "/root\na.wav\t10\n\nb.wav\t10\n", 3, "empty line"),
    ("tsv", "/root\na.wav 10\n", 2, "no tab"),
    ("tsv", "/root\na.wav\t10\nb.wav\tten\n", 3, "integer"),
    ("tsv", "/root\na.wav\t-5\n", 2, ">= 0"),
    ("tsv", "a.wav\t10\nb.wav\t10\n", 1, "root directory"),
    ("lbl", "1\n\n", 2, "empty line"),
    ("lbl", "1\n0,x\n", 2, "integers"),
    ("lbl", "1\n3\n", 2, "unknown class id 3"),
    ("lbl", "-1\n2\n", 1, "unknown class id -1"),
    ("lbl", "1\n", 2, "missing"),
    ("lbl", "1\n2\n0\n", 3, "extra line"),
    ("csv", '0,/m/09x0r,"Speech"\n', 1, "index,mid,display_name"),
    ("csv", "index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n", 3, "out of order"),
    ("csv", "index,mid,display_name\nzero,/m/a,A\n", 2, "integer"),
    ("csv", "index,mid,display_name\n", 2, "no classes"),
    ("csv", "", 1, "empty class map"),
])
def test_errors_name_file_and_line(tmp_path, kind, text, line, what):
    (p := tmp_path / f"bad.{kind}").write_text(text)
    with pytest.raises(ManifestError) as ei:
        READERS[kind](p)
    msg = str(ei.value)
    assert str(p) in msg and f"line {line}:" in msg and what in msg


@pytest.mark.parametrize("kind", sorted(READERS))
def test_missing_files(tmp_path, kind):
    with pytest.raises(ManifestError, match="not found") as ei:
        READERS[kind](tmp_path / f"nope.{kind}")
    assert str(tmp_path / f"nope.{kind}") in str(ei.value)


def test_read_label_file_and_class_map(tmp_path):
    (tmp_path / "a.lbl").write_text("1\n0, 2\n2,2\n")
    assert read_label_file(tmp_path / "a.lbl", 3, num_classes=3) == [[1], [0, 2], [2]]  # duplicates dropped
    p = tmp_path / "labels.csv"
    write_class_map(p, ["Speech", "Dog, barking"])
    assert read_class_map(p) == [{"index": 0, "mid": "/m/beats_demo_0", "display_name": "Speech"},
                                 {"index": 1, "mid": "/m/beats_demo_1", "display_name": "Dog, barking"}]
    write_class_map(p, ["a"], mids=["/m/x"])
    assert read_class_map(p)[0]["mid"] == "/m/x"


# --------------------------------------------------------------------------- read_audio
def test_read_audio_downmix_and_resample(tmp_path):
    wav = read_audio(_wav(tmp_path / "s.wav", np.stack([np.full(4000, 0.5), np.full(4000, -0.1)], 1)))
    assert wav.dtype == torch.float32 and wav.shape == (4000,)
    assert torch.allclose(wav, torch.full((4000,), 0.2), atol=1e-6)
    t = np.arange(44100) / 44100
    wav = read_audio(_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr=44100, subtype="PCM_16"))
    assert wav.shape == (16000,)
    assert abs(int(np.abs(np.fft.rfft(wav.numpy())).argmax()) - 440) <= 1  # 1 s: bin k = k Hz
    assert MIN_SAMPLES_ONE_PATCH == 2800 and 1 + (MIN_SAMPLES_ONE_PATCH - 400) // 160 == 16


def test_read_audio_errors_name_file(tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    cases = [(tmp_path / "corrupt.wav", "could not decode"),
             (_wav(tmp_path / "empty.wav", np.zeros(0)), "empty"),
             (tmp_path / "missing.wav", "not found"),
             (_wav(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 1000)), "non-finite")]
    for path, what in cases:
        with pytest.raises(AudioReadError) as ei:
            read_audio(path)
        msg = str(ei.value)
        assert str(path) in msg and what in msg and ei.value.path == str(path)
        assert "bad_audio='skip'" in msg  # says what to do
        assert str(pickle.loads(pickle.dumps(ei.value))) == msg  # survives DataLoader workers


# --------------------------------------------------------------------------- AudioDataset
def _corpus(tmp_path, lengths, corrupt=(), lie=None):
    """Ramp wavs (values = sample index / 1e5) + manifest; returns the tsv path."""
    rows = []
    for k, n in enumerate(lengths):
        p = _wav(tmp_path / "audio" / f"c{k}.wav", np.arange(n) / 1e5 + k)
        if k in corrupt:
            p.write_bytes(b"not audio at all")
        rows.append((f"audio/c{k}.wav", n if lie is None or k != lie[0] else lie[1]))
    write_manifest(tmp_path / "train.tsv", str(tmp_path), rows)
    return tmp_path / "train.tsv"


def test_dataset_drops_short_manifest_entries(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="beats_fairseq.data.audio_dataset"):
        ds = AudioDataset(_corpus(tmp_path, [5000, 1000, 3000, 2000]))
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "2 of 4" in drops[0] and "c1.wav" in drops[0]
    assert len(ds) == 2 and ds.kept_indices.tolist() == [0, 2] and ds.skipped_indices.tolist() == [1, 3]
    assert ds[1]["source"].shape == (3000,) and ds[1]["id"] == 1


def test_dataset_bad_audio_skip_and_fail(tmp_path, caplog):
    tsv = _corpus(tmp_path, [4000, 4000, 4000], corrupt=(1,), lie=(2, 9000))
    _wav(tmp_path / "audio" / "c2.wav", np.zeros(1000))  # manifest says 9000, file has 1000
    ds = AudioDataset(tsv, bad_audio="skip")
    with caplog.at_level(logging.WARNING, logger="beats_fairseq.data.audio_dataset"):
        assert ds[1] is None and ds[1] is None and ds[2] is None  # 2nd time: counted, not logged
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 2 and "c1.wav" in warns[0] and "could not decode" in warns[0]
    assert "c2.wav" in warns[1] and "1000 samples" in warns[1]
    assert ds.num_bad == 3 and [p.split("/")[-1] for p in ds.bad_paths] == ["c1.wav", "c2.wav"]
    assert "c1.wav" in ds.bad_audio_report() and "2 known bad" in ds.bad_audio_report()
    batch = ds.collater([ds[0], ds[1], ds[2]])
    assert batch["id"].tolist() == [0] and batch["net_input"]["source"].shape == (1, 4000)
    assert ds.collater([None, None]) == {}

    ds = AudioDataset(tsv, bad_audio="fail")
    assert ds[0] is not None
    with pytest.raises(AudioReadError) as ei:
        ds[1]
    assert str(tmp_path / "audio" / "c1.wav") in str(ei.value) and "bad_audio='skip'" in str(ei.value)


def test_collater_padding_mask_and_hooks(tmp_path):
    tsv = _corpus(tmp_path, [3000, 5000])
    ds = AudioDataset(tsv)
    batch = ds.collater([ds[0], ds[1]])
    src, mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert batch["id"].dtype == torch.long and batch["id"].tolist() == [0, 1]
    assert src.shape == (2, 5000) and src.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask[0, :3000].sum() == 0 and mask[0, 3000:].all() and not mask[1].any()
    assert (src[0, 3000:] == 0).all() and torch.equal(src[1], ds[1]["source"])

    class Labelled(AudioDataset):
        def extra_item(self, i):
            return {"label": int(self.kept_indices[i]) * 10}

        def collate_extra(self, samples, batch):
            batch["target"] = torch.tensor([s["label"] for s in samples])

    ds = Labelled(tsv, pad_to=4000, crop="start")
    assert ds.size(0) == ds.size(1) == ds.num_tokens(1) == 4000 and ds[1]["label"] == 10
    batch = ds.collater([ds[0], None, ds[1]])
    assert batch["net_input"]["source"].shape == (2, 4000) and batch["target"].tolist() == [0, 10]
    assert batch["net_input"]["padding_mask"].sum(1).tolist() == [1000, 0]


def test_random_crop_deterministic_per_seed_epoch_index(tmp_path):
    tsv = _corpus(tmp_path, [16000] * 3)

    def offsets(seed, epoch, crop="random"):
        ds = AudioDataset(tsv, max_sample_size=3000, seed=seed, crop=crop)
        ds.set_epoch(epoch)
        out = []
        for i in range(3):
            x = ds[i]["source"]
            off = round((x[0].item() - i) * 1e5)
            assert torch.allclose(x, torch.arange(off, off + 3000) / 1e5 + i, atol=1e-5)  # a slice
            out.append(off)
        return out

    a = offsets(1, 1)
    assert a == offsets(1, 1) and len(set(a)) > 1  # reproducible, differs per index
    assert a != offsets(1, 2) and a != offsets(2, 1)  # differs per epoch and seed
    assert offsets(1, 1, "center") == [6500] * 3 and offsets(1, 1, "start") == [0] * 3


def test_sizes_and_ordered_indices(tmp_path):
    tsv = _corpus(tmp_path, [4000, 9000, 3000, 9000, 6000])
    ds = AudioDataset(tsv, max_sample_size=8000)
    assert ds.sizes.tolist() == [4000, 8000, 3000, 8000, 6000]
    assert ds.num_tokens_vec(np.array([1, 2])).tolist() == [8000, 3000]
    np.random.seed(0)
    order = ds.ordered_indices()
    assert sorted(order.tolist()) == list(range(5))
    assert ds.sizes[order].tolist() == [8000, 8000, 6000, 4000, 3000]
    np.random.seed(0)
    assert ds.ordered_indices().tolist() == order.tolist()
    assert all(ds.sizes[b].max() * len(b) <= 16000 for b in ds.batch_by_size(order, max_tokens=16000))
    with pytest.raises(ValueError, match="crop"):
        AudioDataset(tsv, crop="middle")


# --------------------------------------------------------------------------- demo corpus
def _digests(root):
    """sha256 per file; a tsv's root line (the absolute out dir) is left out."""
    return {str(p.relative_to(root)): hashlib.sha256(
        p.read_bytes().split(b"\n", 1)[1] if p.suffix == ".tsv" else p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_deterministic_and_layout(tmp_path):
    small = dict(num_train=12, num_valid=6, num_test=6, seconds=1.0, seed=3)
    info = demo.generate_corpus(tmp_path / "a", **small)
    demo.generate_corpus(tmp_path / "b", **small)
    demo.generate_corpus(tmp_path / "c", **{**small, "seed": 4})
    da = _digests(tmp_path / "a")
    assert da == _digests(tmp_path / "b") and len(da) == 36 + 15 + 1  # wavs, tsv/lbl/mlbl, labels.csv
    assert da != _digests(tmp_path / "c")
    assert info["counts"] == {"train": 12, "train_multi": 6, "valid": 6, "valid_multi": 3,
                              "test": 6, "test_multi": 3}
    a = tmp_path / "a"
    m = read_manifest(a / "train.tsv")
    assert m.root == str(a) and m.paths[0] == "audio/train/train_00000.wav" and (m.sizes == 16000).all()
    classes = read_class_map(a / "labels.csv")
    assert len(classes) == len(demo.CLASSES) >= 6
    single = read_label_file(a / "train.lbl", len(m), len(classes))
    assert all(len(c) == 1 for c in single) and read_label_file(a / "train.mlbl", len(m)) == single
    multi = read_label_file(a / "valid_multi.mlbl", len(read_manifest(a / "valid_multi.tsv")), len(classes))
    assert all(1 <= len(c) <= 3 for c in multi) and max(map(len, multi)) > 1
    info = sf.info(m.abspath(0))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    item = AudioDataset(a / "train.tsv", shuffle=False)[0]
    assert item["source"].shape == (16000,) and item["source"].abs().max() > 0.01


def test_demo_cli(tmp_path, capsys):
    from beats_fairseq.cli import make_demo_data

    with pytest.raises(SystemExit) as ei:
        make_demo_data.main(["--help"])
    assert ei.value.code == 0 and "--num-train" in capsys.readouterr().out
    argv = ["--out", str(tmp_path), "--num-train", "6", "--num-valid", "6", "--num-test", "6"]
    with pytest.raises(SystemExit) as ei:
        make_demo_data.main(argv + ["--seconds", "0.1"])
    assert ei.value.code == 2 and "too short" in capsys.readouterr().err
    assert make_demo_data.main(argv + ["--seconds", "0.5", "--multi-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "train.tsv" in out and str(tmp_path) in out
    assert not (tmp_path / "train_multi.tsv").exists() and (tmp_path / "test.lbl").exists()


def _features(tsv, lbl):
    """Background-normalised band energies: 95th percentile over time of
    (log band power - per-clip median over time) in 24 log-spaced bands."""
    m = read_manifest(tsv)
    edges = np.unique(np.geomspace(2, 257, 25).astype(int))
    feats = []
    for i in range(len(m)):
        x, _ = sf.read(m.abspath(i), dtype="float32")
        frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
        power = np.abs(np.fft.rfft(frames)) ** 2
        bands = np.log(np.stack([power[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], 1) + 1e-8)
        feats.append(np.percentile(bands - np.median(bands, axis=0), 95, axis=0))
    return np.array(feats), np.array([c[0] for c in read_label_file(lbl, len(m))])


def test_demo_classes_distinguishable(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    demo.generate_corpus(tmp_path, num_train=120, num_valid=60, num_test=0, seconds=2.0, multi_ratio=0)
    assert not (tmp_path / "test.tsv").exists()  # empty splits are not written
    xtr, ytr = _features(tmp_path / "train.tsv", tmp_path / "train.lbl")
    xva, yva = _features(tmp_path / "valid.tsv", tmp_path / "valid.lbl")
    # chance = 1/6; up- vs down-chirp differ only in time, which these static features ignore
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ztr, zva = (xtr - mu) / sd, (xva - mu) / sd
    means = np.stack([ztr[ytr == c].mean(0) for c in range(len(demo.CLASSES))])
    ncm = (np.argmin(((zva[:, None] - means[None]) ** 2).sum(-1), 1) == yva).mean()
    assert ncm >= 0.4, ncm  # nearest class mean
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(xtr, ytr)
    assert clf.score(xva, yva) >= 0.55


def test_known_bad_files_are_skipped_without_reopening(tmp_path, monkeypatch, caplog):
    """A file that failed once is not opened again (nor logged), still counted; a copy of the
    dataset (the main process) learns the failures of another (a DataLoader worker) from the batch."""
    from beats_fairseq.data import audio_dataset

    tsv = _corpus(tmp_path, [4000, 4000, 4000], corrupt=(1,))
    worker, main = AudioDataset(tsv), AudioDataset(tsv)
    opened = []
    real = audio_dataset.read_audio
    monkeypatch.setattr(audio_dataset, "read_audio", lambda path, rate: opened.append(path) or real(path, rate))
    with caplog.at_level(logging.WARNING, logger="beats_fairseq.data.audio_dataset"):
        first = worker.collater([worker[i] for i in (0, 1, 2)])
        second = worker.collater([worker[i] for i in (2, 1, 0)])
    assert [p.split("/")[-1] for p in opened] == ["c0.wav", "c1.wav", "c2.wav", "c2.wav", "c0.wav"]
    assert len([r for r in caplog.records if "c1.wav" in r.getMessage()]) == 1
    assert first["num_bad_audio"] == second["num_bad_audio"] == 1 and worker.num_bad == 2
    assert [i for i, _ in first["bad_items"]] == [1] and second["bad_items"] == []  # with the batch that found it
    main.remember_bad(first["bad_items"])
    opened.clear()
    assert main[1] is None and opened == [] and main.num_bad == 1
    # an all-bad batch collates to {} (fairseq drops it): its ids travel with the next batch
    fresh = AudioDataset(tsv)
    assert fresh.collater([fresh[1]]) == {} and [i for i, _ in fresh.collater([fresh[0]])["bad_items"]] == [1]
