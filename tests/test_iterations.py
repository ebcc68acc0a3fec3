"""Iter2+ pre-training: precomputed tokenizer labels (store, checks, equality with on-the-fly
labels) and tiny iter2 runs in both label modes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf, open_dict

from beats_fairseq.cli import precompute_labels
from beats_fairseq.data.label_store import (
    PAD_LABEL,
    LabelStore,
    LabelStoreMismatch,
    PrecomputedLabelsDataset,
    num_patches,
    tokenizer_identity,
)
from beats_fairseq.loading import load_frozen_tokenizer
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel

from conftest import REPO, run_train

TINY_TOKENIZER = dict(
    input_patch_size=16, embed_dim=32, encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
    encoder_attention_heads=4, conv_pos=16, conv_pos_groups=16, relative_position_embedding=True,
    gru_rel_pos=True, deep_norm=True, codebook_size=32, quant_dim=16, kmeans_init=False, estimator_layers=0,
)


def make_tokenizer(path, seed=0):
    """A tiny tokenizer (random weights, random unit codebook) saved in the official format."""
    torch.manual_seed(seed)
    model = BeatsTokenizerModel(BeatsTokenizerConfig(**TINY_TOKENIZER))
    torch.save(model.to_official(), path)
    return str(path)


def precompute(tokenizer, data, out, *extra):
    args = ["--tokenizer", str(tokenizer), "--data", str(data), "--out", str(out), "--max-sample-size", "48000",
            "--num-workers", "0", "--no-progress", "--quiet", *extra]
    assert precompute_labels.main(args) == 0


def make_task(data, labels=None, **task):
    from beats_fairseq.tasks.beats_pretraining import BeatsPretrainingConfig, BeatsPretrainingTask

    root = OmegaConf.create({"common": {"seed": 1, "bf16": False, "fp16": False}})
    values = dict(data=str(data), max_sample_size=48000, crop="start", precomputed_labels=labels)
    values.update(task)
    root.task = OmegaConf.structured(BeatsPretrainingConfig(**values))
    return BeatsPretrainingTask(root.task)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizers")
    return make_tokenizer(folder / "tok_a.pt", seed=0), make_tokenizer(folder / "tok_b.pt", seed=1)


@pytest.fixture(scope="module")
def labels(demo_data, tokenizers, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "iter2"
    precompute(tokenizers[0], demo_data, out, "--splits", "train", "valid")
    return out


def on_the_fly_labels(tokenizer, batch):
    return tokenizer.extract_labels(batch["net_input"]["source"], batch["net_input"]["padding_mask"])


def test_store_format_and_sidecar(labels, demo_data, tokenizers):
    store = LabelStore(str(labels), "train")
    meta = store.meta
    assert meta["format"] == "beats-precomputed-labels" and meta["dtype"] == "int16"
    assert meta["manifest"]["path"] == str(Path(demo_data, "train.tsv").resolve())
    assert meta["crop"] == {"mode": "none", "max_sample_size": 48000, "num_cropped": 0}
    assert meta["tokenizer"]["codebook_size"] == 32 and meta["tokenizer"]["path"] == os.path.abspath(tokenizers[0])
    assert len(store.offsets) == meta["manifest"]["entries"] + 1 == 121
    assert all(store.count(j) == num_patches(48000) == 144 for j in range(120))
    assert store.labels.dtype == np.int16 and 0 <= store.labels.min() and store.labels.max() < 32
    assert "precompute_labels" in meta["command"] and "--tokenizer" in meta["command"]


def test_precomputed_labels_equal_on_the_fly_labels(labels, demo_data, tokenizers):
    tokenizer = load_frozen_tokenizer(tokenizers[0])
    task = make_task(demo_data, str(labels))
    for split in ("train", "valid"):
        task.load_dataset(split)
        dataset = task.datasets[split]
        assert isinstance(dataset, PrecomputedLabelsDataset)
        order = np.random.RandomState(0).permutation(len(dataset))
        compared = 0
        for start in range(0, len(order), 11):  # other batch sizes and compositions than when precomputed
            batch = dataset.collater([dataset[int(i)] for i in order[start:start + 11]])
            assert torch.equal(batch["target"], on_the_fly_labels(tokenizer, batch))
            compared += batch["target"].numel()
        assert compared == len(dataset) * 144


def test_variable_length_clips_are_labelled_alone_and_padded_with_minus_one(tmp_path, tokenizers):
    rng = np.random.RandomState(0)
    lengths = [48000, 30000, 16200, 47000]
    os.makedirs(tmp_path / "audio")
    rows = []
    for k, n in enumerate(lengths):
        sf.write(tmp_path / "audio" / f"c{k}.wav", (0.1 * rng.randn(n)).astype(np.float32), 16000)
        rows.append(f"audio/c{k}.wav\t{n}")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n" + "\n".join(rows) + "\n")
    precompute(tokenizers[0], tmp_path, tmp_path / "labels", "--splits", "train", "--batch-size", "3")
    tokenizer = load_frozen_tokenizer(tokenizers[0])
    task = make_task(tmp_path, str(tmp_path / "labels"))
    task.load_dataset("train")
    dataset = task.datasets["train"]
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    target = batch["target"]
    assert target.shape == (len(dataset), num_patches(48000))
    for row, i in enumerate(batch["id"].tolist()):
        wav = dataset[i]["source"]
        alone = tokenizer.extract_labels(wav[None])[0]
        assert torch.equal(target[row, :alone.numel()], alone)
        assert (target[row, alone.numel():] == PAD_LABEL).all()


def test_model_never_predicts_unlabelled_patches():
    from beats_fairseq.models.beats import BeatsConfig, BeatsModel

    torch.manual_seed(0)
    model = BeatsModel(BeatsConfig(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=64, embed_dim=32,
                                   encoder_attention_heads=4, conv_pos=16, label_predictor_layers=1,
                                   codebook_size=32, codebook_dim=16, mask_prob=0.75))
    source = 0.1 * torch.randn(2, 16000)
    target = torch.randint(0, 32, (2, num_patches(16000)))
    target[1, 40:] = PAD_LABEL
    out = model(source, target=target)
    assert (out["targets"] >= 0).all() and (out["labels"] >= 0).all()
    assert out["labels"].numel() == target.numel() - (target.numel() // 2 - 40)


def test_mismatching_manifest_crop_sample_rate_and_tokenizer_are_refused(labels, demo_data, tokenizers, tmp_path):
    # changed manifest: one clip fewer
    data = tmp_path / "data"
    data.mkdir()
    lines = Path(demo_data, "train.tsv").read_text().splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LabelStoreMismatch, match=r"manifest is .*labels were computed for") as err:
        make_task(data, str(labels)).load_dataset("train")
    assert "precompute_labels --tokenizer" in str(err.value)  # the command that rewrites them
    # crop: clips are cropped now (max_sample_size 32000) but were not when labelled
    with pytest.raises(LabelStoreMismatch, match=r"crop\.mode is 'start' now"):
        make_task(demo_data, str(labels), max_sample_size=32000).load_dataset("train")
    # a random crop cannot be precomputed
    with pytest.raises(LabelStoreMismatch, match=r"task\.crop=random.*set task\.crop=start"):
        make_task(demo_data, str(labels), max_sample_size=32000, crop="random").load_dataset("train")
    # sample rate: the task reads audio at the fbank's 16 kHz only
    with pytest.raises(ValueError, match=r"task\.sample_rate=8000: .*fixed at 16000 Hz"):
        make_task(demo_data, str(labels), sample_rate=8000)
    # another tokenizer: the model's tokenizer_path names tok_b
    from beats_fairseq.models.beats import BeatsConfig

    task = make_task(demo_data, str(labels))
    task.load_dataset("valid")
    cfg = OmegaConf.structured(BeatsConfig(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=64,
                                           embed_dim=32, encoder_attention_heads=4, conv_pos=16,
                                           label_predictor_layers=1, tokenizer_path=tokenizers[1]))
    with open_dict(cfg):
        cfg._name = "beats"
    with pytest.raises(LabelStoreMismatch, match=r"tokenizer is .*tok_b\.pt.*tok_a\.pt.*precompute_labels"):
        task.build_model(cfg)
    # the right tokenizer passes; a split loaded after the model is checked too
    cfg.tokenizer_path = tokenizers[0]
    task.build_model(cfg)
    task.load_dataset("train")
    identity = tokenizer_identity(load_frozen_tokenizer(tokenizers[1]), tokenizers[1])
    with pytest.raises(LabelStoreMismatch, match="tokenizer"):
        LabelStore(str(labels), "train").check_tokenizer(identity)
    # missing split: names the command
    with pytest.raises(FileNotFoundError, match="beats-precompute-labels --splits test"):
        make_task(demo_data, str(labels)).load_dataset("test")


def test_precompute_skips_up_to_date_splits(labels, demo_data, tokenizers):
    before = os.path.getmtime(Path(labels, "valid.labels.npy"))
    precompute(tokenizers[0], demo_data, labels, "--splits", "valid")
    assert os.path.getmtime(Path(labels, "valid.labels.npy")) == before


# ---------------------------------------------------------------------------- end to end
def _inner_losses(log):
    return [m.group(1) for m in re.finditer(r"\[train_inner\]\[INFO\] - epoch \d+:\s+\d+ / \d+ loss=([0-9.]+)", log)]


def test_models_rebuilt_from_a_checkpoint_never_read_the_tokenizer(demo_data, tokenizers, tmp_path):
    from beats_fairseq.models.beats import BeatsConfig

    task = make_task(demo_data)
    cfg = OmegaConf.structured(BeatsConfig(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=64,
                                           embed_dim=32, encoder_attention_heads=4, conv_pos=16,
                                           label_predictor_layers=1, tokenizer_path=str(tmp_path / "gone.pt")))
    with open_dict(cfg):
        cfg._name = "beats"
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        task.build_model(cfg)  # for training: the tokenizer is needed
    model = task.build_model(cfg, from_checkpoint=True)  # inference: it is not read
    assert model.frozen_tokenizer is None and model.tokenizer is None and model.num_codes == 1024
    with pytest.raises(RuntimeError, match="no tokenizer attached"):
        model(torch.zeros(1, 16000))
    # for training, the task attaches the tokenizer and writes its codebook size into the config
    cfg.tokenizer_path = tokenizers[0]
    model = task.build_model(cfg)
    assert cfg.codebook_size == model.num_codes == 32 and model.frozen_tokenizer.source == tokenizers[0]
    assert not any(k.startswith("frozen_tokenizer") for k in model.state_dict())


def test_students_of_every_iteration_start_from_equal_weights(demo_data, tokenizers):
    """Loading the iter2 tokenizer draws nothing the student's initialisation uses: with the same seed,
    the iter1 (random projection) and iter2 (trained tokenizer) students start from the same encoder and
    label predictor; the random projection depends on its own seed only."""
    from beats_fairseq.models.beats import BeatsConfig

    task = make_task(demo_data)

    def student(tokenizer_path=None, tokenizer_seed=1337):
        cfg = OmegaConf.structured(BeatsConfig(**{**TINY_STUDENT, "tokenizer_path": tokenizer_path,
                                                  "tokenizer_seed": tokenizer_seed}))
        with open_dict(cfg):
            cfg._name = "beats"
        torch.manual_seed(7)  # fairseq seeds torch with common.seed before it builds the model
        return task.build_model(cfg)

    iter1, iter2, iter3 = student(), student(tokenizers[0]), student(tokenizers[1])
    assert iter2.frozen_tokenizer is not None and iter1.tokenizer is not None
    for other in (iter2, iter3):
        for part in ("backbone", "label_predictor"):
            ours, theirs = getattr(iter1, part).state_dict(), getattr(other, part).state_dict()
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    # another global draw before the build changes the student, and nothing else
    torch.manual_seed(8)
    changed = task.build_model(iter1.cfg)
    assert not torch.equal(changed.backbone.patch_embedding.weight, iter1.backbone.patch_embedding.weight)
    assert torch.equal(changed.tokenizer.projection, iter1.tokenizer.projection)
    # the random projection: a function of tokenizer_seed alone
    other_seed = student(tokenizer_seed=1338)
    assert torch.equal(student().tokenizer.codebook, iter1.tokenizer.codebook)
    assert not torch.equal(other_seed.tokenizer.projection, iter1.tokenizer.projection)


TINY_STUDENT = dict(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=64, embed_dim=32,
                    encoder_attention_heads=4, conv_pos=16, label_predictor_layers=1, codebook_size=64,
                    codebook_dim=16)


STANDALONE = """
import os, sys, torch, beats_fairseq
from fairseq import checkpoint_utils
path, tokenizer = sys.argv[1:]
assert not os.path.exists(tokenizer)
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
assert cfg.model.tokenizer_path == tokenizer and cfg.model.codebook_size == 32
model = beats_fairseq.load(path)
assert model.frozen_tokenizer is None and models[0].label_head.out_features == 32
x = torch.randn(2, 16000) * 0.1
a, b = model.extract_features(x)[0], models[0].eval().extract_features(x)[0]
assert a.shape == (2, 48, 128) and torch.equal(a, b)
print("STANDALONE-OK")
"""


def _first_clip(data):
    lines = Path(data, "test.tsv").read_text().splitlines()
    return os.path.join(lines[0], lines[1].split("\t")[0])


@pytest.mark.slow
def test_iter2_tiny_runs_with_on_the_fly_and_precomputed_labels(demo_data, labels, tokenizers, tmp_path, capsys):
    own = tmp_path / "tokenizer.pt"  # a copy of tokenizers[0]: deleted below
    shutil.copy(tokenizers[0], own)
    common = [f"task.data={demo_data}", "optimization.max_update=4",
              "common.log_interval=1", "dataset.validate_interval_updates=4", "checkpoint.save_interval_updates=4"]
    fly = run_train(REPO / "examples" / "beats_iter2", "tiny", *common, f"checkpoint.save_dir={tmp_path / 'fly'}",
                    f"model.tokenizer_path={own}")
    pre = run_train(REPO / "examples" / "beats_iter2", "tiny", *common, f"checkpoint.save_dir={tmp_path / 'pre'}",
                    f"model.tokenizer_path={tokenizers[0]}", f"task.precomputed_labels={labels}", "task.crop=start")
    assert "precomputed labels from" in pre and "precomputed labels from" not in fly
    for save in ("fly", "pre"):
        assert (tmp_path / save / "checkpoint_last.pt").is_file()
    # same labels, same seeds, same masks: the same losses update by update
    fly_losses, pre_losses = _inner_losses(fly), _inner_losses(pre)
    assert len(fly_losses) == 4 and fly_losses == pre_losses
    # the checkpoint reloads as an encoder
    import beats_fairseq

    model = beats_fairseq.load(str(tmp_path / "pre" / "checkpoint_last.pt"))
    feats, _ = model.extract_features(torch.zeros(1, 16000))
    assert feats.shape[-1] == 128
    # the checkpoint is self-contained: it loads and extracts features in a new process without its tokenizer
    os.remove(own)
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(tmp_path / "fly" / "checkpoint_last.pt"), str(own)],
                          capture_output=True, text=True, cwd="/")
    assert "STANDALONE-OK" in proc.stdout, proc.stderr[-3000:]
    # beats-extract reads no tokenizer the user did not name: labels of an iter2 checkpoint need --tokenizer
    from beats_fairseq.cli import extract

    tokenizer = load_frozen_tokenizer(tokenizers[0])
    checkpoint, test = str(tmp_path / "pre" / "checkpoint_last.pt"), str(Path(demo_data, "test.tsv"))
    out, fast = tmp_path / "extract_pre", ["--num-workers", "0", "--no-progress", "--overwrite"]
    assert extract.main([checkpoint, test, "--out", str(out), *fast]) == 0
    assert (out / "patch_features.npy").exists() and not (out / "labels.npy").exists()
    capsys.readouterr()
    assert extract.main([checkpoint, test, "--out", str(out), "--outputs", "clip,labels", *fast]) == 1
    assert f"pass --tokenizer {tokenizers[0]}" in capsys.readouterr().err  # names the tokenizer it was trained on
    assert extract.main([checkpoint, test, "--out", str(out), "--tokenizer", tokenizers[0], *fast]) == 0
    first = tokenizer.extract_labels(torch.from_numpy(sf.read(_first_clip(demo_data), dtype="float32")[0])[None])
    labels = np.load(tmp_path / "extract_pre" / "labels.npy")
    assert torch.equal(torch.from_numpy(labels[:first.numel()]), first.reshape(-1))
    shutil.rmtree(tmp_path / "fly", ignore_errors=True)
