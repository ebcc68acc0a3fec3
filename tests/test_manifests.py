"""beats-manifest builders on small fixture corpora (folder of classes, AudioSet, ESC-50, SPC v2),
including 44.1 kHz and stereo audio (resampled on the fly, or 16 kHz copies with --resample-dir)."""

import os

import numpy as np
import pytest
import soundfile as sf

from beats_fairseq.cli import manifest
from beats_fairseq.data import read_audio, read_class_map, read_label_file, read_manifest

FAST = ["--no-progress", "--quiet"]


def write_wav(path, seconds=0.5, sr=16000, channels=1, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    data = 0.2 * rng.standard_normal((int(seconds * sr), channels))
    sf.write(path, data if channels > 1 else data[:, 0], sr)
    return path


def load_split(folder, name, ext="lbl", num_classes=None):
    m = read_manifest(os.path.join(folder, f"{name}.tsv"))
    labels = read_label_file(os.path.join(folder, f"{name}.{ext}"), len(m), num_classes)
    return m, labels


def check_lengths(m):
    """num_samples is the 16 kHz length read_audio gives (resampled / downmixed on the fly)."""
    for i in range(len(m)):
        assert read_audio(m.abspath(i)).numel() == m.sizes[i], m.paths[i]


def test_folder_of_classes_with_splits_and_odd_audio(tmp_path):
    src = tmp_path / "sounds"
    for k in range(4):
        write_wav(str(src / "dog" / f"d{k}.wav"), seed=k)
        write_wav(str(src / "cat" / "nested" / f"c{k}.flac"), seed=10 + k)
    write_wav(str(src / "cat" / "stereo44k.wav"), seconds=0.6, sr=44100, channels=2)
    write_wav(str(src / "loose.wav"))  # no class folder: ignored
    out = tmp_path / "out"
    assert manifest.main(["folder", str(src), "--out", str(out), "--valid-fraction", "0.25", *FAST]) == 0
    classes = read_class_map(out / "labels.csv")
    assert [(c["mid"], c["display_name"]) for c in classes] == [("cat", "cat"), ("dog", "dog")]
    train, train_labels = load_split(out, "train", num_classes=2)
    valid, valid_labels = load_split(out, "valid", num_classes=2)
    assert train.root == str(src) and len(train) + len(valid) == 9 and len(valid) == 2
    assert not (out / "test.tsv").exists()
    for m, labels in ((train, train_labels), (valid, valid_labels)):
        for rel, ids in zip(m.paths, labels):
            assert ids == [0 if rel.startswith("cat/") else 1]
        check_lengths(m)
    assert "cat/stereo44k.wav" in train.paths + valid.paths
    assert set(train.paths + valid.paths) == {os.path.relpath(p, src) for p in manifest.find_audio(str(src / "cat"))
                                              } | {f"dog/d{k}.wav" for k in range(4)}

    copies = tmp_path / "copies16k"
    again = tmp_path / "again"
    assert manifest.main(["folder", str(src), "--out", str(again), "--resample-dir", str(copies),
                          "--relative-root", *FAST]) == 0
    m, _ = load_split(again, "train")
    assert m.root == str(copies) and open(again / "train.tsv").readline().strip() == "../copies16k"
    assert "cat/nested/c0.wav" in m.paths  # flac converted to wav
    for i in range(len(m)):
        info = sf.info(m.abspath(i))
        assert info.samplerate == 16000 and info.channels == 1 and info.frames == m.sizes[i]
    i = m.paths.index("cat/stereo44k.wav")
    original = read_audio(src / "cat" / "stereo44k.wav").numpy()
    assert m.sizes[i] == original.size
    np.testing.assert_allclose(sf.read(m.abspath(i))[0], original, atol=1 / 2**14)


def test_folder_bad_files_and_class_reuse(tmp_path, capsys):
    src = tmp_path / "sounds"
    write_wav(str(src / "b" / "ok.wav"))
    (src / "b" / "broken.wav").write_bytes(b"RIFF junk")
    out = tmp_path / "out"
    assert manifest.main(["folder", str(src), "--out", str(out), *FAST]) == 1
    assert "broken.wav" in capsys.readouterr().err
    assert manifest.main(["folder", str(src), "--out", str(out), "--skip-bad", *FAST]) == 0
    assert read_manifest(out / "train.tsv").paths == ["b/ok.wav"]
    assert "broken.wav" in (out / "skipped.tsv").read_text()
    # test split built with the class indices of an existing class map
    (tmp_path / "classes.csv").write_text("index,mid,display_name\n0,a,A\n1,b,B\n")
    assert manifest.main(["folder", str(src), "--out", str(out), "--skip-bad", "--split-name", "test",
                          "--classes-from", str(tmp_path / "classes.csv"), *FAST]) == 0
    assert (out / "test.lbl").read_text() == "1\n"
    assert [c["display_name"] for c in read_class_map(out / "labels.csv")] == ["A", "B"]


def test_audioset_segments(tmp_path):
    audio = tmp_path / "audioset"
    write_wav(str(audio / "bal" / "Y--PJHxphWEs_30.000_40.000.wav"), seconds=1.0)
    write_wav(str(audio / "bal" / "a_b-cdefghi.flac"), seconds=0.7, sr=32000)
    write_wav(str(audio / "eval" / "Yxyz123ABCD__5.000_15.000.wav"), seconds=0.8, sr=44100, channels=2)
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0dgw9r,"Human sounds"\n2,/m/07qfr4h,"Speech, synthesized"\n')
    (tmp_path / "balanced_train_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/07qfr4h"\n'
        'a_b-cdefghi, 0.000, 10.000, "/m/0dgw9r"\n'
        'MISSINGvid0, 10.000, 20.000, "/m/09x0r"\n')
    (tmp_path / "eval_segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n" 'xyz123ABCD_, 5.000, 15.000, "/m/0dgw9r,/m/09x0r"\n')
    out = tmp_path / "out"
    assert manifest.main(["audioset", "--segments", str(tmp_path / "balanced_train_segments.csv"),
                          str(tmp_path / "eval_segments.csv"), "--splits", "train", "eval",
                          "--class-map", str(tmp_path / "class_labels_indices.csv"),
                          "--audio-dir", str(audio), "--out", str(out), *FAST]) == 0
    train, train_labels = load_split(out, "train", "mlbl", 3)
    assert train.paths == ["bal/Y--PJHxphWEs_30.000_40.000.wav", "bal/a_b-cdefghi.flac"]
    assert train_labels == [[0, 2], [1]]
    assert (out / "train_missing.txt").read_text().startswith("MISSINGvid0\t10.000\t20.000")
    eval_, eval_labels = load_split(out, "eval", "mlbl", 3)
    assert eval_.paths == ["eval/Yxyz123ABCD__5.000_15.000.wav"] and eval_labels == [[1, 0]]
    check_lengths(train)
    check_lengths(eval_)
    assert read_class_map(out / "labels.csv")[2]["display_name"] == "Speech, synthesized"


def test_audioset_unknown_label_is_an_error(tmp_path, capsys):
    (tmp_path / "classes.csv").write_text("index,mid,display_name\n0,/m/a,A\n")
    (tmp_path / "seg.csv").write_text('abcdefghijk, 0.000, 10.000, "/m/zzz"\n')
    assert manifest.main(["audioset", "--segments", str(tmp_path / "seg.csv"), "--class-map",
                          str(tmp_path / "classes.csv"), "--audio-dir", str(tmp_path), "--out",
                          str(tmp_path / "out"), *FAST]) == 1
    assert "seg.csv, line 1" in capsys.readouterr().err


def test_esc50_folds(tmp_path):
    root = tmp_path / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    categories = ["dog", "rooster", "rain"]
    for k in range(6):
        fold, target = 1 + k % 2, k % 3
        name = f"{fold}-{100 + k}-A-{target}.wav"
        write_wav(str(root / "audio" / name), seconds=0.3, sr=44100, seed=k)  # ESC-50 is 44.1 kHz
        rows.append(f"{name},{fold},{target},{categories[target]},False,{100 + k},A")
    os.makedirs(root / "meta")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "esc"
    assert manifest.main(["esc50", str(root), "--out", str(out), *FAST]) == 0
    for fold in (1, 2):
        train, train_labels = load_split(out / f"fold{fold}", "train", num_classes=3)
        valid, valid_labels = load_split(out / f"fold{fold}", "valid", num_classes=3)
        assert all(p.startswith(f"{3 - fold}-") for p in train.paths)
        assert all(p.startswith(f"{fold}-") for p in valid.paths) and len(valid) == 3
        for m, labels in ((train, train_labels), (valid, valid_labels)):
            assert [ids[0] for ids in labels] == [int(p[-5]) for p in m.paths]
        assert set(train.sizes) == {-(-int(0.3 * 44100) * 16000 // 44100)}  # 16 kHz length
        assert [c["display_name"] for c in read_class_map(out / f"fold{fold}" / "labels.csv")] == categories
    check_lengths(read_manifest(out / "all.tsv"))
    assert manifest.main(["esc50", str(root), "--out", str(tmp_path / "one"), "--folds", "2", *FAST]) == 0
    assert not (tmp_path / "one" / "fold1").exists() and (tmp_path / "one" / "fold2" / "valid.tsv").exists()
    assert manifest.main(["esc50", str(root), "--out", str(tmp_path / "bad"), "--folds", "7", *FAST]) == 1


def test_spcv2_lists(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    files = {"yes": ["a_nohash_0.wav", "b_nohash_0.wav", "c_nohash_0.wav"], "no": ["a_nohash_0.wav", "d_nohash_1.wav"]}
    for word, names in files.items():
        for name in names:
            write_wav(str(root / word / name), seconds=1.0)
    write_wav(str(root / "_background_noise_" / "white_noise.wav"), seconds=2.0)
    (root / "validation_list.txt").write_text("yes/b_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/c_nohash_0.wav\nno/d_nohash_1.wav\n")
    out = tmp_path / "spc"
    assert manifest.main(["spcv2", str(root), "--out", str(out), *FAST]) == 0
    assert [c["display_name"] for c in read_class_map(out / "labels.csv")] == ["no", "yes"]
    splits = {name: load_split(out, name, num_classes=2) for name in ("train", "valid", "test")}
    assert splits["train"][0].paths == ["no/a_nohash_0.wav", "yes/a_nohash_0.wav"]
    assert splits["train"][1] == [[0], [1]]
    assert splits["valid"][0].paths == ["yes/b_nohash_0.wav"] and splits["valid"][1] == [[1]]
    assert splits["test"][0].paths == ["no/d_nohash_1.wav", "yes/c_nohash_0.wav"]
    assert list(splits["test"][0].sizes) == [16000, 16000]
    (root / "testing_list.txt").write_text("yes/c_nohash_0.wav\nno/gone.wav\n")
    assert manifest.main(["spcv2", str(root), "--out", str(out), *FAST]) == 1
    assert manifest.main(["spcv2", str(root), "--out", str(out), "--skip-bad", *FAST]) == 0


@pytest.mark.parametrize("name", ["folder_train.tsv", "audioset_balanced_train.tsv", "esc50_fold1_valid.tsv",
                                  "spcv2_valid.tsv"])
def test_sample_manifests_parse(name):
    folder = os.path.join(os.path.dirname(__file__), os.pardir, "manifests", "samples")
    m = read_manifest(os.path.join(folder, name))
    stem = name[:-4]
    ext = "mlbl" if stem.startswith("audioset") else "lbl"
    classes = read_class_map(os.path.join(folder, f"{stem.split('_')[0]}_labels.csv"))
    assert len(read_label_file(os.path.join(folder, f"{stem}.{ext}"), len(m), len(classes))) == len(m)
