"""Exact resume and non-finite losses, for pre-training, tokenizer training and fine-tuning.

A run killed with SIGKILL right after its checkpoint at update 2 and restarted with the same
command (fairseq resumes from ``checkpoint_last.pt``: model, optimizer, lr schedule, iterator
position) reaches, after 4 updates, exactly the model and validation metrics of an
uninterrupted run: same data order and crops, same masks (pre-training), same k-means / EMA
codebook / dead-code re-seeding (tokenizer), same mixup / SpecAugment / roll draws
(fine-tuning). Every checkpoint loads with ``torch.load(weights_only=True)``.
"""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from test_distributed import (  # noqa: F401  (pretrain_reference, teacher: fixtures)
    FINETUNE,
    ITER1,
    TOKENIZER,
    VALID_KEYS,
    checkpoint,
    finetune_args,
    num_updates,
    override,
    parse_metrics,
    pretrain_args,
    pretrain_reference,
    teacher,
    tokenizer_args,
    train,
    train_and_kill,
)


def assert_identical(a, b, what="model"):
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs (max {float((a[k].double() - b[k].double()).abs().max())})"


def assert_nested_equal(a, b, where="optimizer"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_nested_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_weights_only_loadable(save_dir):
    files = sorted(save_dir.glob("*.pt"))
    assert files
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert "model" in state and "extra_state" in state, path


def resume_after_kill(config_dir, args, tmp_path):
    """Kill after the checkpoint at update 2, restart: (log of the killed run, log of the resumed run)."""
    save = tmp_path / "resumed"
    args = override(args, f"checkpoint.save_dir={save}")
    killed = train_and_kill(config_dir, "tiny", *args, after_updates=2)
    assert num_updates(checkpoint(save)) == 2
    resumed = train(config_dir, "tiny", *args)
    assert "Loaded checkpoint" in resumed and "@ 2 updates" in resumed, resumed[-4000:]
    return save, killed, resumed


def check_same_run(ref_dir, ref_log, save, killed, resumed, valid_kind, keys):
    a, b = checkpoint(ref_dir), checkpoint(save)
    assert num_updates(a) == num_updates(b) == 4
    assert_identical(a["model"], b["model"])
    assert_nested_equal(a["last_optimizer_state"], b["last_optimizer_state"])
    ref_valid = parse_metrics(ref_log, valid_kind)
    assert len(ref_valid) == 2
    got = parse_metrics(killed, valid_kind) + parse_metrics(resumed, valid_kind)
    assert len(got) == 2, got
    for x, y in zip(ref_valid, got):
        for key in keys:
            assert x[key] == y[key], (key, x, y)
    assert a["extra_state"]["val_loss"] == b["extra_state"]["val_loss"]
    assert_weights_only_loadable(ref_dir)
    assert_weights_only_loadable(save)


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_pretraining_resume_after_sigkill_is_exact(demo_data, pretrain_reference, tmp_path):
    ref_dir, ref_log = pretrain_reference
    save, killed, resumed = resume_after_kill(ITER1, pretrain_args(demo_data, "unused", 8), tmp_path)
    check_same_run(ref_dir, ref_log, save, killed, resumed, "valid", VALID_KEYS["pretrain"])
    # the random-projection tokenizer travels in the checkpoint unchanged
    ref = checkpoint(ref_dir)["model"]
    assert {"tokenizer.projection", "tokenizer.codebook", "tokenizer.seed"} <= set(ref)


@pytest.mark.slow
def test_pretraining_resume_after_max_update_stop_is_exact(demo_data, pretrain_reference, tmp_path):
    """Stop at max_update=2 (same lr schedule: total_num_update=4), continue to 4 in the same save_dir."""
    ref_dir, ref_log = pretrain_reference
    save = tmp_path / "ckpt"
    args = override(pretrain_args(demo_data, save, 8), "++lr_scheduler.total_num_update=4")
    first = train(ITER1, "tiny", *override(args, "optimization.max_update=2"))
    second = train(ITER1, "tiny", *args)
    check_same_run(ref_dir, ref_log, save, first, second, "valid", VALID_KEYS["pretrain"])


@pytest.mark.slow
def test_tokenizer_resume_after_sigkill_is_exact(demo_data, teacher, tmp_path):
    """k-means initialisation before the kill, EMA codebook updates on both sides of it."""
    args = tokenizer_args(demo_data, tmp_path / "ref", 8, teacher, kmeans=True)
    ref_log = train(TOKENIZER, "tiny", *args)
    assert "codebook k-means initialised" in ref_log
    save, killed, resumed = resume_after_kill(TOKENIZER, args, tmp_path)
    assert "k-means" not in resumed  # the codebook came back from the checkpoint
    check_same_run(tmp_path / "ref", ref_log, save, killed, resumed, "valid", VALID_KEYS["tokenizer"])


@pytest.mark.slow
def test_tokenizer_resume_with_dead_code_reseeding_is_exact(demo_data, teacher, tmp_path):
    """Dead-code re-seeding at update 3, after the kill at update 2."""
    args = tokenizer_args(demo_data, tmp_path / "ref", 8, teacher, kmeans=True, dead_codes=True)
    ref_log = train(TOKENIZER, "tiny", *args)
    assert "re-seeded" in ref_log
    save, killed, resumed = resume_after_kill(TOKENIZER, args, tmp_path)
    check_same_run(tmp_path / "ref", ref_log, save, killed, resumed, "valid", VALID_KEYS["tokenizer"])


@pytest.mark.slow
def test_finetuning_resume_after_sigkill_is_exact(demo_data, tmp_path):
    """mixup, SpecAugment and roll draw the same randomness in the resumed run."""
    args = finetune_args(demo_data, tmp_path / "ref", 6, augment=True)
    ref_log = train(FINETUNE, "tiny", *args)
    save, killed, resumed = resume_after_kill(FINETUNE, args, tmp_path)
    check_same_run(tmp_path / "ref", ref_log, save, killed, resumed, "valid_multi", VALID_KEYS["finetune"])
    # the best metric is stored as a plain float (numpy scalars break weights-only loading)
    best = checkpoint(save)["extra_state"]["best"]
    assert type(best) is float and 0.0 < best <= 1.0


# --------------------------------------------------------------------------- non-finite loss
def make_poisoned_manifest(root, demo_data, num_good=15):
    """Training manifest of good demo clips plus ``poison.wav``, a float wav with samples of
    1e38: finite, so it reads fine, but ``2**15 * x`` overflows in the fbank and the loss of
    its batch is NaN. Validation manifest: good clips only."""
    from beats_fairseq.data.manifest import read_manifest, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    good = read_manifest(str(demo_data / "train.tsv"))
    rows = [(good.abspath(i), int(good.sizes[i])) for i in range(num_good)]
    sf.write(root / "poison.wav", np.full(48000, 1e38, dtype=np.float32), 16000, subtype="FLOAT")
    write_manifest(str(root / "train.tsv"), "/", [(p.lstrip("/"), n) for p, n in rows + [(str(root / "poison.wav"), 48000)]])
    write_manifest(str(root / "valid.tsv"), "/", [(p.lstrip("/"), n) for p, n in rows[:8]])
    return root


@pytest.mark.slow
def test_nonfinite_loss_fails_naming_the_batch_files(demo_data, tmp_path):
    data = make_poisoned_manifest(tmp_path / "data", demo_data)
    args = override(pretrain_args(data, tmp_path / "ckpt", 4), "dataset.curriculum=0")
    log = train(ITER1, "tiny", *args, expect_fail=True)
    tail = log[-6000:]
    assert "FloatingPointError" in tail and "non-finite loss" in tail and "poison.wav" in tail, tail
    assert "task.nonfinite_loss=skip" in tail


@pytest.mark.slow
def test_nonfinite_loss_skip_keeps_the_model_finite(demo_data, tmp_path):
    data = make_poisoned_manifest(tmp_path / "data", demo_data)
    save = tmp_path / "ckpt"
    args = override(pretrain_args(data, save, 4), "++task.nonfinite_loss=skip", "dataset.curriculum=0")
    log = train(ITER1, "tiny", *args)
    assert any("non-finite loss" in line and "poison.wav" in line and "skipping" in line for line in log.splitlines())
    epoch = parse_metrics(log, "train")[-1]
    assert epoch["nonfinite_skipped"] == 1 and math.isfinite(epoch["loss"]), epoch
    state = checkpoint(save)
    assert num_updates(state) == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(math.isfinite(v["loss"]) for v in parse_metrics(log))


@pytest.mark.slow
def test_nonfinite_loss_skip_restores_the_tokenizer_codebook(demo_data, teacher, tmp_path):
    """The forward pass of the poisoned batch already moved the EMA codebook: skip restores it."""
    data = make_poisoned_manifest(tmp_path / "data", demo_data)
    save = tmp_path / "ckpt"
    args = override(tokenizer_args(data, save, 4, teacher, kmeans=True), "++task.nonfinite_loss=skip",
                    "dataset.curriculum=0")
    log = train(TOKENIZER, "tiny", *args)
    assert parse_metrics(log, "train")[-1]["nonfinite_skipped"] == 1
    model = checkpoint(save)["model"]
    for k in ("quantize.embedding.weight", "quantize.embedding.embed_avg", "quantize.cluster_size"):
        assert torch.isfinite(model[k]).all(), k
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
