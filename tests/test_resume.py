"""Exact resume, crash-safe checkpoints and non-finite losses, for pre-training (iter1, iter2 with
on-the-fly and precomputed labels), tokenizer training and fine-tuning.

A run killed with SIGKILL right after a checkpoint and relaunched with the same command (fairseq
resumes from ``checkpoint_last.pt``: model, optimizer, lr schedule, iterator position) ends with
exactly the model, optimizer state and validation metrics of an uninterrupted run, over several
epochs: killed mid-epoch and at an epoch end, with 0 or 2 DataLoader workers, and with a
``checkpoint_last.pt`` truncated as by a kill while it was written (the relaunch names it and
resumes from the newest intact checkpoint). Kills are real SIGKILLs sent once the log reports the
checkpoint; a kill inside a checkpoint copy is a SIGKILL of a process stalled in the middle of it.
Every checkpoint loads with ``torch.load(weights_only=True)``.
"""

import math
import os
import random
import shutil
import signal

import numpy as np
import pytest
import soundfile as sf
import torch

from live_runs import PAUSE_USER_DIR, Run
from test_distributed import (  # noqa: F401  (pretrain_reference, teacher: fixtures)
    FINETUNE,
    ITER1,
    TOKENIZER,
    VALID_KEYS,
    checkpoint,
    command,
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


# --------------------------------------------------------------------------- resume (4 updates)
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
def test_tokenizer_resume_with_dead_code_reseeding_is_exact(demo_data, teacher, tmp_path):
    """Dead-code re-seeding at update 3, after the kill at update 2."""
    args = tokenizer_args(demo_data, tmp_path / "ref", 8, teacher, kmeans=True, dead_codes=True)
    ref_log = train(TOKENIZER, "tiny", *args)
    assert "re-seeded" in ref_log
    save, killed, resumed = resume_after_kill(TOKENIZER, args, tmp_path)
    check_same_run(tmp_path / "ref", ref_log, save, killed, resumed, "valid", VALID_KEYS["tokenizer"])


# --------------------------------------------------------------------------- resume over epochs
# 24 clips of 3 s, batch 8: 3 updates per epoch, 8 updates = 2 epochs and 2 of 3 batches. Random
# 1 s crops (their offsets depend on the epoch), batch order shuffled every epoch (curriculum 0),
# validation and a checkpoint at every epoch end (updates 3, 6) and at updates 4 and 8. The kills
# come right after the checkpoint at update 4 (mid-epoch: epoch 2, 1 of 3 batches done) or at
# update 6 (the end of epoch 2). The old bugs showed in both: fairseq froze the batches at the
# epoch its iterator was first built (epoch 1 in an uninterrupted run, the resumed epoch after a
# restart), and persistent DataLoader workers kept the epoch of their fork (crops).
EPOCHS = ["optimization.max_update=8", "checkpoint.save_interval_updates=4", "dataset.validate_interval_updates=4",
          "checkpoint.keep_interval_updates=1", "dataset.curriculum=0", "task.max_sample_size=16000"]
ITER2 = ITER1.parent / "beats_iter2"


@pytest.fixture(scope="module")
def epoch_data(demo_data, tmp_path_factory):
    """24 training and 8 validation clips of the demo corpus, single- and multi-label splits."""
    from beats_fairseq.data.manifest import read_manifest, write_manifest

    out = tmp_path_factory.mktemp("epoch_data")
    for split, num in (("train", 24), ("valid", 8), ("train_multi", 24), ("valid_multi", 8)):
        m = read_manifest(str(demo_data / f"{split}.tsv"))
        write_manifest(str(out / f"{split}.tsv"), "/", [(m.abspath(i).lstrip("/"), int(m.sizes[i])) for i in range(num)])
        for ext in ("lbl", "mlbl"):
            if (demo_data / f"{split}.{ext}").exists():
                lines = (demo_data / f"{split}.{ext}").read_text().splitlines()[:num]
                (out / f"{split}.{ext}").write_text("\n".join(lines) + "\n")
    shutil.copy(demo_data / "labels.csv", out / "labels.csv")
    return out


def valid_by_update(kind, *logs):
    """Validation metrics keyed by update (a later log overrides an earlier one)."""
    out = {}
    for log in logs:
        for metrics in parse_metrics(log, kind):
            out[int(metrics["num_updates"])] = metrics
    return out


# A random update and signal for a test: BEATS_TEST_SEED=N draws the same ones again.
SEED = int(os.environ.get("BEATS_TEST_SEED") or random.randrange(10**6))


def random_stop(test, low, high):
    """(stop signal, "update:U") with U drawn from [low, high], for :func:`interrupted_runs`."""
    rng = random.Random(f"{SEED}:{test}")
    update, signum = rng.randint(low, high), rng.choice((signal.SIGUSR1, signal.SIGTERM))
    print(f"{test}: {signum.name} in update {update} (BEATS_TEST_SEED={SEED})")
    return signum, f"update:{update}"


def interrupted_runs(config_dir, args, save, stops, workers=0, while_paused=None):
    """Launch, interrupt at each of ``stops`` in turn (each relaunch resumes), run the last launch to
    the end: the logs of all launches. A stop is ``("kill", U)``: SIGKILL right after the checkpoint
    of update U; ``("truncate", U)``: the same, then ``checkpoint_last.pt`` cut in half (a kill while
    it was written: the relaunch names it and resumes from the newest intact checkpoint); or
    ``(signal, "WHERE:U")``: the signal sent to the run and its DataLoader workers while the run is
    paused at WHERE of update U (``tests/beats_pause``), after ``while_paused(run)`` if given: the
    run must save update U, say so in one line and exit 75."""
    from beats_fairseq.preemption import EXIT_STOPPED

    args = override(args, f"checkpoint.save_dir={save}", f"dataset.num_workers={workers}",
                    f"common.user_dir={PAUSE_USER_DIR}")
    cmd = command(config_dir, "tiny", args)
    logs, last = [], save / "checkpoint_last.pt"
    for how, where in stops:
        if how in ("kill", "truncate"):
            run, update = Run(cmd), where
            run.wait_for(rf"Saved checkpoint .*@ {update} updates")
            run.kill()
            run.wait()
        else:
            run, update = Run(cmd, {"BEATS_TEST_PAUSE": where}), int(where.split(":")[1])
            run.wait_for(f"^PAUSED {where.replace(':', ' ')}$")
            if while_paused is not None:
                while_paused(run)
            run.signal(how)
            run.release()
            stopped = [line for line in run.expect_exit(EXIT_STOPPED).splitlines() if "stopped by" in line]
            assert len(stopped) == 1 and f"stopped by {how.name} after update {update} " in stopped[0], run.log[-4000:]
            assert f"{last} holds it: run the same command to resume" in stopped[0], stopped
        assert num_updates(checkpoint(save)) == update, (how, where)
        logs.append(run.log)
        if how == "truncate":
            with open(last, "r+b") as f:
                f.truncate(last.stat().st_size // 2)
    logs.append(Run(cmd).expect_exit(0))
    for (how, where), log in zip(stops, logs[1:]):
        update = where if how in ("kill", "truncate") else int(where.split(":")[1])
        assert "Traceback" not in log and f"@ {update} updates" in log, log[-4000:]
        if how == "truncate":
            warning = [line for line in log.splitlines() if "is not an intact checkpoint" in line]
            assert warning and str(last) in warning[0], log[-4000:]
    return logs


def check_resumed_equals_reference(ref, ref_log, save, logs, kind, keys):
    a, b = checkpoint(ref), checkpoint(save)
    assert num_updates(a) == num_updates(b) == 8
    assert a["extra_state"]["train_iterator"] == b["extra_state"]["train_iterator"]
    assert_identical(a["model"], b["model"])
    assert_nested_equal(a["last_optimizer_state"], b["last_optimizer_state"])
    want, got = valid_by_update(kind, ref_log), valid_by_update(kind, *logs)
    assert sorted(want) == sorted(got) == [3, 4, 6, 8], (want, got)
    for update in want:
        for key in keys:
            assert want[update][key] == got[update][key], (update, key, want[update], got[update])
    assert_weights_only_loadable(save)


@pytest.fixture(scope="module")
def iter1_epochs_reference(epoch_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("iter1_epochs") / "ref"
    args = override(pretrain_args(epoch_data, save, 8), *EPOCHS)
    return args, save, train(ITER1, "tiny", *args)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, truncate_last, workers", [(4, True, 2), (6, False, 0)],
                         ids=["mid_epoch-killed_while_writing-2_workers", "epoch_end-0_workers"])
def test_pretraining_resume_over_epochs_is_exact(iter1_epochs_reference, kill_at, truncate_last, workers, tmp_path):
    """After the mid-epoch kill, the relaunch is stopped once more, by a signal at a random update."""
    args, ref, ref_log = iter1_epochs_reference
    stops = [("truncate" if truncate_last else "kill", kill_at)]
    if kill_at < 6:
        stops.append(random_stop("pretraining", kill_at + 1, 7))
    logs = interrupted_runs(ITER1, args, tmp_path / "resumed", stops, workers)
    check_resumed_equals_reference(ref, ref_log, tmp_path / "resumed", logs, "valid", VALID_KEYS["pretrain"])


@pytest.mark.slow
def test_pretraining_stops_on_signals_at_an_epoch_end_in_validation_and_in_a_save(iter1_epochs_reference, tmp_path):
    """Signals sent to the run and its 2 DataLoader workers while it is paused: in the last update
    of epoch 1 (no checkpoint is due there, checkpoint.save_interval=2: the stop writes the
    end-of-epoch checkpoint), in the validation after update 4 (the validation and the update's
    checkpoint finish, then the stop), in the middle of writing the checkpoint of update 6 (the
    write finishes, nothing is written twice). While the first launch is paused, a second launch
    into the same checkpoint.save_dir stops at once, naming it. The last launch ends as the
    uninterrupted run (which saved at the end of epoch 1 too: saving changes no training state)."""
    from beats_fairseq.run_lock import EXIT_FOLDER_HELD

    args, ref, ref_log = iter1_epochs_reference
    save = tmp_path / "resumed"
    held = []

    def second_launch(first):
        if held:
            return
        cmd = command(ITER1, "tiny", override(args, f"checkpoint.save_dir={save}"))
        held.append(Run(cmd, name="second launch").expect_exit(EXIT_FOLDER_HELD, timeout=300))
        line = [line for line in held[0].splitlines() if "is in use by another run" in line]
        assert len(line) == 1 and f"pid {first.proc.pid} on " in line[0] and str(save) in line[0], held[0][-4000:]
        assert "Loaded checkpoint" not in held[0] and "begin training" not in held[0]

    stops = [(signal.SIGUSR1, "update:3"), (signal.SIGTERM, "validation:4"), (signal.SIGUSR1, "save:6")]
    logs = interrupted_runs(ITER1, override(args, "checkpoint.save_interval=2"), save, stops, workers=2,
                            while_paused=second_launch)
    assert held
    epoch_end, in_validation, in_save = logs[:3]
    assert "epoch 1 @ 3 updates" in epoch_end and "begin validation" in epoch_end  # the end-of-epoch validation
    valid = in_validation.index("[valid][INFO]")
    assert in_validation.index("PAUSED validation 4") < valid < in_validation.index("stopped by SIGTERM")
    assert len([line for line in in_save.splitlines() if "Saved checkpoint" in line and "@ 6 updates" in line]) == 1
    assert "Loaded checkpoint" in logs[1] and "epoch 2 @ 3 updates" in logs[1]  # epoch 1 is done
    check_resumed_equals_reference(ref, ref_log, save, logs, "valid", VALID_KEYS["pretrain"])


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["on_the_fly", "precomputed"])
def test_iter2_resume_over_epochs_is_exact(epoch_data, labels, tmp_path):
    from test_iterations import make_tokenizer, precompute

    tokenizer = make_tokenizer(tmp_path / "tokenizer.pt")
    # iter2 takes its codebook from the tokenizer: the recipe has no codebook keys to override
    iter1_only = ("model.codebook_size=", "model.codebook_dim=")
    args = [a for a in pretrain_args(epoch_data, tmp_path / "ref", 8) if not a.startswith(iter1_only)]
    args = override(args, *EPOCHS, f"model.tokenizer_path={tokenizer}")
    if labels == "precomputed":  # a precomputed label belongs to one crop: the start of the clip
        precompute(tokenizer, epoch_data, tmp_path / "labels", "--splits", "train", "valid",
                   "--max-sample-size", "16000")
        args = override(args, f"task.precomputed_labels={tmp_path / 'labels'}", "task.crop=start")
    ref_log = train(ITER2, "tiny", *args)
    assert ("precomputed labels from" in ref_log) == (labels == "precomputed")
    logs = interrupted_runs(ITER2, args, tmp_path / "resumed", [("kill", 4)], workers=2)
    check_resumed_equals_reference(tmp_path / "ref", ref_log, tmp_path / "resumed", logs, "valid",
                                   VALID_KEYS["pretrain"])


@pytest.mark.slow
def test_tokenizer_resume_over_epochs_is_exact(epoch_data, teacher, tmp_path):
    """k-means initialisation before the kill, EMA codebook updates on both sides of it; the
    relaunch is stopped once more, by a signal at a random update."""
    args = override(tokenizer_args(epoch_data, tmp_path / "ref", 8, teacher, kmeans=True), *EPOCHS)
    ref_log = train(TOKENIZER, "tiny", *args)
    logs = interrupted_runs(TOKENIZER, args, tmp_path / "resumed", [("kill", 4), random_stop("tokenizer", 5, 7)])
    assert "k-means" not in logs[1] + logs[2]  # the codebook came back from the checkpoint
    check_resumed_equals_reference(tmp_path / "ref", ref_log, tmp_path / "resumed", logs, "valid",
                                   VALID_KEYS["tokenizer"])


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "beats_adam"])
def test_finetuning_resume_over_epochs_is_exact(epoch_data, optimizer, tmp_path):
    """mixup, SpecAugment and roll draw the same randomness in the resumed runs: stopped by a
    signal at a random update, then killed at the end of epoch 2. With the tiny recipe's optimizer
    (fairseq's adam) and with the paper-scale recipes' (beats_adam)."""
    args = override(finetune_args(epoch_data, tmp_path / "ref", 8, augment=True), *EPOCHS,
                    f"optimizer.groups.default.optimizer._name={optimizer}")
    ref_log = train(FINETUNE, "tiny", *args)
    logs = interrupted_runs(FINETUNE, args, tmp_path / "resumed", [random_stop("finetuning", 1, 5), ("kill", 6)],
                            workers=2)
    check_resumed_equals_reference(tmp_path / "ref", ref_log, tmp_path / "resumed", logs, "valid_multi",
                                   VALID_KEYS["finetune"])
    assert checkpoint(tmp_path / "resumed")["cfg"]["optimizer"]["groups"]["default"]["optimizer"]["_name"] == optimizer
    # the best metric is stored as a plain float (numpy scalars break weights-only loading)
    best = checkpoint(tmp_path / "resumed")["extra_state"]["best"]
    assert type(best) is float and 0.0 < best <= 1.0


@pytest.mark.slow
def test_known_bad_files_are_logged_once_per_run_and_counted_every_epoch(demo_data, tmp_path):
    """Bad files, 2 DataLoader workers, 3 epochs in two launches (stopped at the end of epoch 2 by
    max_update, which writes checkpoint_last.pt there, as the end-of-epoch save a kill would follow):
    each bad file is warned about once (per split) in the whole run, since workers forked for a
    later epoch and the relaunch (the set is in the checkpoint) skip it unopened; every epoch still
    counts all its bad clips. The bad validation files are named by fairseq's dry run over the
    validation set, before training, which reads them first."""
    from test_distributed import BAD_READ, make_bad_manifest

    data = make_bad_manifest(tmp_path / "data", demo_data, num_good=12)  # 18 clips, 4 unreadable
    save = tmp_path / "ckpt"
    args = override(pretrain_args(data, save, 6), "dataset.num_workers=2", "++lr_scheduler.total_num_update=9",
                    "checkpoint.save_interval_updates=0", "dataset.validate_interval_updates=0")
    first = train(ITER1, "tiny", *override(args, "optimization.max_update=6"))
    second = train(ITER1, "tiny", *override(args, "optimization.max_update=9"))
    epochs = parse_metrics(first, "train") + parse_metrics(second, "train")
    assert [e["bad_audio"] for e in epochs] == [len(BAD_READ)] * 3, epochs
    assert [v["bad_audio"] for v in parse_metrics(first + second, "valid")] == [len(BAD_READ)] * 3
    for name in BAD_READ:
        warned = [line for line in (first + second).splitlines() if "skipping bad audio" in line and name in line]
        assert len(warned) == 2, (name, warned)  # once for train, once for valid
        dry_run = first[first.index("begin dry-run validation"):first.index("begin training epoch 1")]
        assert any(name in line for line in dry_run.splitlines() if "skipping bad audio" in line), name
        assert not any(name in line for line in second.splitlines() if "skipping bad audio" in line)
    known = checkpoint(save)["extra_state"]["BeatsPretrainingTask"]["known_bad_audio"]
    assert set(known) == {"train", "valid"} and all(len(ids) == len(BAD_READ) for ids in known.values())


# --------------------------------------------------------------------------- crash-safe checkpoint files
KILL_DURING_COPY = """
import shutil, sys, time
from beats_fairseq import safe_checkpoints
def stalled_copy(src, dst, length=0):
    dst.write(src.read(1000)); dst.flush(); print("writing", flush=True); time.sleep(60)
shutil.copyfileobj = stalled_copy
safe_checkpoints.atomic_copy(sys.argv[1], sys.argv[2])
"""


def test_sigkill_during_a_checkpoint_copy_leaves_the_old_file_intact(tmp_path):
    """fairseq copies checkpoint_E_U.pt to checkpoint_last.pt: a SIGKILL in the middle of the copy
    leaves the previous checkpoint_last.pt complete (the copy goes to a temporary name)."""
    import subprocess
    import sys

    from beats_fairseq.safe_checkpoints import checkpoint_problem

    last, new = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_2_8.pt"
    torch.save({"model": {"w": torch.zeros(4)}}, last)
    torch.save({"model": {"w": torch.ones(100000)}}, new)
    before = last.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_COPY, str(new), str(last)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert last.read_bytes() == before and checkpoint_problem(str(last)) is None
    assert (tmp_path / "checkpoint_last.pt.tmp").stat().st_size == 1000  # the interrupted copy
    assert checkpoint_problem(str(tmp_path / "checkpoint_last.pt.tmp")) is not None


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_last_checkpoint(demo_data, pretrain_reference, tmp_path):
    """The run resumes from the checkpoint of update 2 with a file size limit (RLIMIT_FSIZE) below
    a checkpoint's size, so writing the checkpoint of update 4 fails in the middle (EFBIG, what a full
    disk gives as ENOSPC): one line names the folder and the error, the run exits 74, no temporary
    file is left and checkpoint_last.pt is the intact checkpoint of update 2."""
    import resource
    import subprocess

    from beats_fairseq.safe_checkpoints import EXIT_WRITE_FAILED, checkpoint_problem

    save = tmp_path / "ckpt"
    save.mkdir()
    last = save / "checkpoint_last.pt"
    shutil.copy(pretrain_reference[0] / "checkpoint_1_2.pt", last)
    before, limit = last.read_bytes(), last.stat().st_size // 2

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = command(ITER1, "tiny", pretrain_args(demo_data, save, 8))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_WRITE_FAILED, log[-6000:]
    assert "Loaded checkpoint" in log and "@ 2 updates" in log, log[-6000:]
    failed = [line for line in log.splitlines() if "could not write checkpoint" in line]
    assert len(failed) == 1 and f"in {save}: " in failed[0] and "File too large" in failed[0], log[-6000:]
    assert "Traceback" not in log
    assert sorted(p.name for p in save.iterdir()) == ["checkpoint_last.pt", "hydra", "run.lock"]
    assert last.read_bytes() == before and checkpoint_problem(str(last)) is None
    assert num_updates(checkpoint(save)) == 2


def test_broken_checkpoint_last_resumes_from_the_newest_intact_one(tmp_path, caplog):
    import os

    from omegaconf import OmegaConf

    from beats_fairseq.safe_checkpoints import BrokenCheckpointError, checked_load_checkpoint

    calls = []
    load = checked_load_checkpoint(lambda cfg, trainer, **kw: calls.append(cfg.restore_file) or "loaded")
    cfg = OmegaConf.create({"save_dir": str(tmp_path), "restore_file": "checkpoint_last.pt"})
    trainer = type("Trainer", (), {"checkpoint_suffix": ""})()
    assert load(cfg, trainer) == "loaded" and calls == ["checkpoint_last.pt"]  # nothing to resume: fairseq's way
    older, newer, last = (tmp_path / n for n in ("checkpoint_1_4.pt", "checkpoint_2_8.pt", "checkpoint_last.pt"))
    for i, path in enumerate((older, newer, last)):
        torch.save({"model": {"w": torch.full((4,), float(i))}}, path)
        os.utime(path, (1000 + i, 1000 + i))
    assert load(cfg, trainer) == "loaded" and calls[-1] == "checkpoint_last.pt"  # intact: loaded as usual
    newer.write_bytes(newer.read_bytes()[:100])  # a broken one is passed over as well
    for size in (0, last.stat().st_size // 2):
        last.write_bytes(last.read_bytes()[:size])
        with caplog.at_level("WARNING"):
            assert load(cfg, trainer) == "loaded"
        assert calls[-1] == str(older) and cfg.restore_file == "checkpoint_last.pt"
        assert f"{last} is not an intact checkpoint" in caplog.text and f"resuming from {older}" in caplog.text
    older.unlink()
    with pytest.raises(BrokenCheckpointError, match=rf"{last} is not an intact checkpoint .* no other intact"):
        load(cfg, trainer)


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
