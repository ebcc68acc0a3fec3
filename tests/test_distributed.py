"""Multi-process training is correct, not only launched: 2 CPU processes (gloo, DDP) reach the
model and validation metrics of 1 process with the same global batch, for pre-training,
tokenizer training and fine-tuning; the tokenizer's codebook statistics are all-reduced; bad
audio at scale is counted across ranks and DataLoader workers.

How the two runs get identical global batches: every clip has the same length (3 s demo
clips, no padding differences), ``dataset.curriculum`` keeps fairseq from shuffling the list
of batches (the clip order inside an epoch is still shuffled by the dataset), and the batch
size divides the training set. Then update k of 1 process with batch 2B holds clips
``order[2kB:2(k+1)B]``, exactly the union of rank 0's and rank 1's batches of size B.
Dropout is 0; masks are per clip (see ``beats_fairseq/models/beats.py``).

fairseq cannot spawn CPU workers itself (``call_main`` spawns one per CUDA device), so the
processes are started by ``torchrun`` with ``distributed_init_method=env://`` and the rank
read from the environment (the launch line of ``docs/scale.md``).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from live_runs import PAUSE_USER_DIR, Run

EXE = str(Path(sys.executable).with_name("fairseq-hydra-train"))

# Width-64, 2-layer models for every kind of training; no dropout anywhere.
SMALL_ENCODER = ["model.embed_dim=32", "model.encoder_layers=2", "model.encoder_embed_dim=64",
                 "model.encoder_ffn_embed_dim=128", "model.encoder_attention_heads=4", "model.conv_pos=16"]
NO_DROPOUT = ["model.dropout=0.0", "model.attention_dropout=0.0", "model.activation_dropout=0.0",
              "model.encoder_layerdrop=0.0", "model.dropout_input=0.0"]
# 4 updates, validation and a checkpoint after update 2 and at the end.
SCHEDULE = ["optimization.max_update=4", "checkpoint.save_interval_updates=2", "dataset.validate_interval_updates=2",
            "checkpoint.keep_interval_updates=-1", "checkpoint.no_epoch_checkpoints=true", "common.log_interval=1",
            "dataset.required_batch_size_multiple=1", "dataset.curriculum=1000", "common.cpu=true",
            "dataset.num_workers=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def gloo_overrides(nproc):
    """One process per rank on CPU/gloo, ranks and rendezvous from the environment (``env://``)."""
    return [f"distributed_training.distributed_world_size={nproc}", "distributed_training.distributed_backend=gloo",
            "distributed_training.distributed_init_method=env://", "distributed_training.distributed_no_spawn=true",
            "distributed_training.distributed_rank=${oc.env:RANK}"]


def command(config_dir, config_name, overrides, nproc=1):
    """``fairseq-hydra-train`` command line; with ``nproc > 1`` under torchrun on CPU/gloo."""
    cmd = [EXE, "--config-dir", str(config_dir), "--config-name", config_name, *overrides]
    if nproc == 1:
        return cmd
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "--master_addr=localhost"]
    return run + cmd + gloo_overrides(nproc)


def start_ranks(config_dir, config_name, overrides, nproc=2, pause=None):
    """One :class:`Run` per rank, started the way ``srun`` starts them (no torchrun: rank 0 hosts the
    rendezvous store); ``pause``: {rank: "WHERE:UPDATE"} (``tests/beats_pause``)."""
    cmd = command(config_dir, config_name, list(overrides)) + gloo_overrides(nproc)
    port = str(free_port())
    return [Run(cmd, dict(MASTER_ADDR="localhost", MASTER_PORT=port, WORLD_SIZE=str(nproc), RANK=str(rank),
                          LOCAL_RANK=str(rank), **({"BEATS_TEST_PAUSE": pause[rank]} if rank in (pause or {}) else {})),
                name=f"rank {rank}")
            for rank in range(nproc)]


def train(config_dir, config_name, *overrides, nproc=1, expect_fail=False, timeout=900):
    """Run a training to its end; the combined log (pytest.fail with the log on an unexpected exit code)."""
    cmd = command(config_dir, config_name, list(overrides), nproc)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    if (proc.returncode != 0) != expect_fail:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log[-8000:]}")
    return log


def train_and_kill(config_dir, config_name, *overrides, after_updates=2, timeout=900):
    """Start a training and SIGKILL it once the checkpoint after ``after_updates`` is saved."""
    cmd = command(config_dir, config_name, list(overrides))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines, killed = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.search(rf"Saved checkpoint .*checkpoint_last\.pt.*@ {after_updates} updates", line) or (
                    "Saved checkpoint" in line and f"@ {after_updates} updates" in line):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    log = "".join(lines)
    if not killed:
        pytest.fail(f"the run ended before its checkpoint at update {after_updates}:\n{log[-8000:]}")
    return log


def override(args, *new):
    """``args`` with the keys of ``new`` replaced (hydra rejects a key given twice)."""
    keys = {a.split("=", 1)[0].lstrip("+") for a in new}
    return [a for a in args if a.split("=", 1)[0].lstrip("+") not in keys] + list(new)


def checkpoint(save_dir, name="checkpoint_last.pt"):
    return torch.load(Path(save_dir) / name, map_location="cpu", weights_only=True)


def num_updates(state) -> int:
    return int(state["optimizer_history"][-1]["num_updates"])


def assert_same_state(a, b, atol=1e-5, rtol=1e-4, what="model"):
    """Same keys, tensors equal within tolerance (integer tensors exactly)."""
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    worst = (0.0, None)
    for k in a:
        x, y = a[k], b[k]
        if not torch.is_floating_point(x):
            assert torch.equal(x, y), f"{what}: {k} differs"
            continue
        torch.testing.assert_close(x.float(), y.float(), atol=atol, rtol=rtol, msg=lambda m, k=k: f"{what}: {k}: {m}")
        diff = float((x.float() - y.float()).abs().max()) if x.numel() else 0.0
        worst = max(worst, (diff, k), key=lambda t: t[0])
    return worst


def parse_metrics(log: str, kind: str = "valid"):
    """Every ``[kind]`` summary line as a dict of floats (ints for counts), in order."""
    out = []
    for line in log.splitlines():
        if f"[{kind}][INFO]" not in line:
            continue
        fields = {}
        for part in line.split(" | ")[1:]:
            key, _, value = part.strip().partition(" ")
            try:
                fields[key] = float(value)
            except ValueError:
                pass
        out.append(fields)
    return out


def assert_same_metrics(a, b, keys, tol=2e-4):
    assert len(a) == len(b) and a, (a, b)
    for x, y in zip(a, b):
        for key in keys:
            assert key in x and key in y, (key, x, y)
            assert abs(x[key] - y[key]) <= tol * max(1.0, abs(x[key])), (key, x, y)


# --------------------------------------------------------------------------- configurations
def pretrain_args(data, save_dir, batch):
    return [f"task.data={data}", f"checkpoint.save_dir={save_dir}", f"dataset.batch_size={batch}",
            "model.codebook_size=64", "model.codebook_dim=16", "model.label_predictor_layers=1",
            "lr_scheduler.warmup_updates=1", *SMALL_ENCODER, *NO_DROPOUT, *SCHEDULE]


def tokenizer_args(data, save_dir, batch, teacher, kmeans=False, dead_codes=False):
    return [f"task.data={data}", f"checkpoint.save_dir={save_dir}", f"dataset.batch_size={batch}",
            f"model.teacher_path={teacher}", "model.codebook_size=32", "model.quant_dim=16",
            f"model.kmeans_init={str(kmeans).lower()}",
            f"model.dead_code_threshold={0.5 if dead_codes else 0.0}", "model.dead_code_interval=3",
            "lr_scheduler.warmup_updates=1", *SMALL_ENCODER, *NO_DROPOUT, *SCHEDULE]


def make_bad_manifest(root, demo_data, num_good=28):
    """``train.tsv``/``valid.tsv`` with good demo clips plus one of each kind of bad file.

    Fixed on reading (no log line): a stereo 44.1 kHz clip and a mono 8 kHz clip. Skipped with
    one line each (:data:`BAD_READ`): a missing file, a corrupt one, an empty one and one that is
    shorter than a patch although its manifest line says 3 s. Dropped when the manifest is
    loaded (one line listing them): an entry whose manifest length is shorter than a patch.
    """
    import numpy as np
    import soundfile as sf

    from beats_fairseq.data.manifest import read_manifest, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    good = read_manifest(str(demo_data / "train.tsv"))
    rows = [(good.abspath(i), int(good.sizes[i])) for i in range(num_good)]
    rng = np.random.default_rng(0)
    sf.write(root / "stereo_44k.wav", 0.1 * rng.standard_normal((44100 * 3, 2)), 44100)
    sf.write(root / "mono_8k.wav", 0.1 * rng.standard_normal(8000 * 3), 8000)
    sf.write(root / "empty.wav", np.zeros(0), 16000)
    sf.write(root / "short_on_disk.wav", 0.1 * rng.standard_normal(1000), 16000)
    sf.write(root / "short_in_manifest.wav", 0.1 * rng.standard_normal(1000), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    rows += [(str(root / "stereo_44k.wav"), 132300), (str(root / "mono_8k.wav"), 24000),
             (str(root / "empty.wav"), 48000), (str(root / "corrupt.wav"), 48000),
             (str(root / "missing.wav"), 48000), (str(root / "short_on_disk.wav"), 48000),
             (str(root / "short_in_manifest.wav"), 1000)]
    for split in ("train", "valid"):
        write_manifest(str(root / f"{split}.tsv"), "/", [(p.lstrip("/"), n) for p, n in rows])
    return root


BAD_READ = ("empty.wav", "corrupt.wav", "missing.wav", "short_on_disk.wav")


def finetune_args(data, save_dir, batch, augment=False):
    aug = (["model.specaug_time_ratio=0.2", "model.specaug_freq_ratio=0.2", "model.roll=true",
            "model.mixup_alpha=0.5"] if augment else
           ["model.specaug_time_ratio=0.0", "model.specaug_freq_ratio=0.0", "model.roll=false",
            "model.mixup_alpha=0.0"])
    args = [f"task.data={data}", f"checkpoint.save_dir={save_dir}", f"dataset.batch_size={batch}",
            "task.label_ext=mlbl", "task.multilabel=true", "dataset.train_subset=train_multi",
            "dataset.valid_subset=valid_multi", "checkpoint.best_checkpoint_metric=mAP",
            "model.pretrained_path=null", *aug,
            *("++" + item for item in SMALL_ENCODER), *NO_DROPOUT, *SCHEDULE]  # recipes hold no architecture
    # the composite optimizer holds the schedule (lr_scheduler is pass_through)
    return override(args, "optimizer.groups.default.lr_scheduler.warmup_updates=1")


ITER1 = REPO / "examples" / "beats_iter1"
TOKENIZER = REPO / "examples" / "beats_tokenizer"
FINETUNE = REPO / "examples" / "beats_finetune"
VALID_KEYS = {"pretrain": ["loss", "accuracy", "code_usage", "code_perplexity", "bsz"],
              "tokenizer": ["loss", "cosine", "commitment", "code_usage", "code_perplexity", "bsz"],
              "finetune": ["loss", "mAP", "bsz"]}


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny random BEATs in the official format: the tokenizer's teacher (its features)."""
    from omegaconf import OmegaConf

    from beats_fairseq.models.beats import BeatsConfig, BeatsModel

    torch.manual_seed(0)
    cfg = OmegaConf.structured(BeatsConfig(embed_dim=32, encoder_layers=1, encoder_embed_dim=32,
                                           encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=16,
                                           dropout=0.0, attention_dropout=0.0, label_predictor_layers=1,
                                           codebook_size=16, codebook_dim=8))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(BeatsModel(cfg).to_official(), path)
    return path


@pytest.fixture(scope="session")
def pretrain_reference(demo_data, tmp_path_factory):
    """1 process, batch 8, 4 updates (shared with tests/test_resume.py)."""
    save = tmp_path_factory.mktemp("pre_1p") / "ckpt"
    return save, train(ITER1, "tiny", *pretrain_args(demo_data, save, 8))


# --------------------------------------------------------------------------- tests
def test_masks_are_per_clip_whatever_the_batching():
    """A clip's mask depends on (seed, update, clip id) only: the masks of a batch of 8 are those
    of its two halves (2 ranks), and every validation draws the same masks."""
    from omegaconf import OmegaConf

    from beats_fairseq.models.beats import BeatsConfig, BeatsModel

    model = BeatsModel(OmegaConf.structured(BeatsConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=32,
                                                        encoder_ffn_embed_dim=32, encoder_attention_heads=2,
                                                        conv_pos=16, label_predictor_layers=1,
                                                        codebook_size=16, codebook_dim=8)))
    model.set_seed(7)
    model.set_num_updates(3)
    ids = torch.arange(10, 18)
    whole = model.sample_visible(None, 8, 40, "cpu", ids)
    halves = torch.cat([model.sample_visible(None, 4, 40, "cpu", ids[:4]),
                        model.sample_visible(None, 4, 40, "cpu", ids[4:])])
    assert torch.equal(whole, halves)
    assert torch.equal(model.sample_visible(None, 8, 40, "cpu", ids.flip(0)), whole.flip(0))
    model.set_num_updates(4)
    assert not torch.equal(model.sample_visible(None, 8, 40, "cpu", ids), whole)  # new masks every update
    model.set_seed(8)
    model.set_num_updates(3)
    assert not torch.equal(model.sample_visible(None, 8, 40, "cpu", ids), whole)  # and per seed
    model.eval()
    first = model.sample_visible(None, 8, 40, "cpu", ids)
    model.set_num_updates(100)
    assert torch.equal(model.sample_visible(None, 8, 40, "cpu", ids), first)  # fixed validation masks


@pytest.fixture(scope="module")
def pretrain_two_processes(demo_data, tmp_path_factory):
    """2 processes (torchrun), batch 4, 4 updates: (save_dir, log)."""
    save = tmp_path_factory.mktemp("pre_2p") / "ckpt"
    return save, train(ITER1, "tiny", *pretrain_args(demo_data, save, 4), nproc=2)


@pytest.mark.slow
def test_pretraining_two_processes_equal_one(pretrain_reference, pretrain_two_processes):
    ref_dir, ref_log = pretrain_reference
    save, log = pretrain_two_processes
    assert "distributed init (rank 1)" in log or "rank 1" in log
    a, b = checkpoint(ref_dir), checkpoint(save)
    assert num_updates(a) == num_updates(b) == 4
    assert_same_state(a["model"], b["model"])
    assert torch.equal(a["model"]["tokenizer.projection"], b["model"]["tokenizer.projection"])
    assert_same_metrics(parse_metrics(ref_log), parse_metrics(log), VALID_KEYS["pretrain"])
    assert_same_metrics(parse_metrics(ref_log, "train"), parse_metrics(log, "train"), ["loss", "accuracy", "bsz"])


@pytest.mark.slow
def test_ranks_agree_on_a_stop_and_a_lost_rank_is_named(demo_data, pretrain_two_processes, tmp_path):
    """One process per rank, as srun starts them. (1) SIGUSR1 reaches rank 1 only, in update 1
    (rank 0 already waits for it in the gradient all-reduce): both ranks stop after update 1, rank 0
    saves it and says where to resume, both exit 75. (2) The relaunch resumes; rank 1 is SIGKILLed
    once the checkpoint of update 2 is written: rank 0 stops within 4/3 x task.rank_timeout with a
    line naming rank 1 (exit 76), the checkpoint of update 2 intact. (3) The relaunch resumes from
    update 2 and ends bit for bit where the uninterrupted 2-process run ended."""
    from beats_fairseq.preemption import EXIT_STOPPED
    from beats_fairseq.rank_watch import EXIT_LOST_RANK
    from test_resume import assert_identical, assert_nested_equal

    save = tmp_path / "ckpt"
    timeout = 6
    args = override(pretrain_args(demo_data, save, 4), f"common.user_dir={PAUSE_USER_DIR}",
                    f"++task.rank_timeout={timeout}")
    ranks = start_ranks(ITER1, "tiny", args, pause={1: "update:1"})
    ranks[1].wait_for("^PAUSED update 1")
    ranks[1].signal(signal.SIGUSR1)
    ranks[1].release()
    logs = [rank.expect_exit(EXIT_STOPPED, timeout=300) for rank in ranks]
    stopped = [line for line in logs[0].splitlines() if "stopped by SIGUSR1 after update 1" in line]
    assert len(stopped) == 1 and str(save / "checkpoint_last.pt") in stopped[0], logs[0][-4000:]
    assert "stopped by" not in logs[1]
    assert num_updates(checkpoint(save)) == 1

    ranks = start_ranks(ITER1, "tiny", args)
    ranks[0].wait_for(r"Saved checkpoint .*@ 2 updates")
    killed_at = time.monotonic()
    ranks[1].signal(signal.SIGKILL)
    log = ranks[0].expect_exit(EXIT_LOST_RANK, timeout=120)
    assert time.monotonic() - killed_at < timeout * 4 / 3 + 10, log[-4000:]  # 10 s: a loaded test machine
    assert "Loaded checkpoint" in log and "@ 1 updates" in log, log[-4000:]
    lost = [line for line in log.splitlines() if "rank 1 sent no heartbeat" in line]
    assert len(lost) == 1 and f"exit status {EXIT_LOST_RANK}" in lost[0], log[-4000:]
    ranks[1].wait()
    assert num_updates(checkpoint(save)) == 2

    ranks = start_ranks(ITER1, "tiny", args)
    logs = [rank.expect_exit(0, timeout=300) for rank in ranks]
    assert "Loaded checkpoint" in logs[0] and "@ 2 updates" in logs[0], logs[0][-4000:]
    ref, got = checkpoint(pretrain_two_processes[0]), checkpoint(save)
    assert num_updates(ref) == num_updates(got) == 4
    assert_identical(ref["model"], got["model"])
    assert_nested_equal(ref["last_optimizer_state"], got["last_optimizer_state"])


@pytest.mark.slow
def test_tokenizer_training_two_processes_equal_one(demo_data, teacher, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    log1 = train(TOKENIZER, "tiny", *tokenizer_args(demo_data, one, 8, teacher))
    log2 = train(TOKENIZER, "tiny", *tokenizer_args(demo_data, two, 4, teacher), nproc=2)
    a, b = checkpoint(one)["model"], checkpoint(two)["model"]
    assert_same_state(a, b)
    codebook = [k for k in a if k.startswith("quantize.")]
    assert {"quantize.embedding.weight", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg",
            "quantize.cluster_size"} <= set(codebook)
    # the EMA statistics moved (they count the assignments of both ranks) and agree
    assert float(a["quantize.cluster_size"].sum()) > 0
    torch.testing.assert_close(a["quantize.cluster_size"], b["quantize.cluster_size"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(a["quantize.embedding.embed_avg"], b["quantize.embedding.embed_avg"],
                               atol=1e-5, rtol=1e-4)
    assert_same_metrics(parse_metrics(log1), parse_metrics(log2), VALID_KEYS["tokenizer"])


@pytest.mark.slow
def test_finetuning_two_processes_equal_one_and_gather_map(demo_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # the first 2 updates on a frozen encoder: parameters without gradients under DDP
    frozen = ["model.freeze_encoder_updates=2", "distributed_training.find_unused_parameters=true"]
    log1 = train(FINETUNE, "tiny", *finetune_args(demo_data, one, 6), *frozen)
    log2 = train(FINETUNE, "tiny", *finetune_args(demo_data, two, 3), *frozen, nproc=2)
    assert_same_state(checkpoint(one)["model"], checkpoint(two)["model"])
    v1, v2 = parse_metrics(log1, "valid_multi"), parse_metrics(log2, "valid_multi")
    assert_same_metrics(v1, v2, VALID_KEYS["finetune"])
    assert all(0.0 < v["mAP"] <= 1.0 for v in v1)
    # mAP over the gathered predictions of the whole validation set, not a per-rank or summed one
    assert checkpoint(two)["extra_state"]["val_loss"] == pytest.approx(v2[-1]["mAP"], abs=1e-4)


# --------------------------------------------------------------------------- codebook under DDP
def _quantizer_worker(rank, world, port, data, out):
    import torch.distributed as dist

    from beats_fairseq.tokenizers.quantizer import NormEMAVectorQuantizer

    dist.init_process_group("gloo", init_method=f"tcp://localhost:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(16, 8, kmeans_init=True, dead_code_threshold=0.9, dead_code_interval=2).train()
    shards = data.chunk(world)
    for step in range(4):
        torch.manual_seed(100 + step)  # fairseq re-seeds every update identically on every rank
        q(shards[rank] + 0.01 * step)
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_codebook_identical_on_every_rank_after_kmeans_ema_and_reseeding(tmp_path):
    """k-means on rank 0 is broadcast, EMA counts/sums are all-reduced, dead codes re-seeded from rank 0."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    data = torch.randn(2, 64, 8)
    mp.spawn(_quantizer_worker, args=(2, free_port(), data, tmp_path), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert float(r0["embedding.initted"]) == 1.0 and float(r0["cluster_size"].sum()) > 0


# --------------------------------------------------------------------------- bad data at scale
@pytest.mark.slow
def test_bad_manifest_two_processes_with_workers(demo_data, tmp_path):
    """Bad clips in a 2-process run with DataLoader workers: handled as documented, counted per epoch."""
    data = make_bad_manifest(tmp_path / "data", demo_data)
    save = tmp_path / "ckpt"
    args = override(pretrain_args(data, save, 4), "dataset.num_workers=1", "optimization.max_update=100",
                    "optimization.max_epoch=2", "checkpoint.save_interval_updates=0",
                    "dataset.validate_interval_updates=0")
    log = train(ITER1, "tiny", *args, nproc=2)
    for name in BAD_READ:
        lines = [line for line in log.splitlines() if "skipping bad audio" in line and name in line]
        # at most one line per copy of a dataset that meets the file: 2 ranks x (train, valid) x
        # (main process, which collates fairseq's "dummy" first batch, and the DataLoader worker)
        assert 1 <= len(lines) <= 2 * 2 * 2, (name, lines)
    assert "short_in_manifest.wav" in log  # dropped at load, named in that line
    for name in ("stereo_44k.wav", "mono_8k.wav"):  # down-mixed / resampled, silently
        assert name not in log, name
    epochs = parse_metrics(log, "train")
    assert len(epochs) == 2 and all(e["bad_audio"] == len(BAD_READ) for e in epochs), epochs
    valid = parse_metrics(log)
    assert valid and all(v["bad_audio"] == len(BAD_READ) for v in valid), valid
    state = checkpoint(save)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(demo_data, tmp_path):
    """With task.nonfinite_loss=skip, a NaN loss on one rank skips the optimizer step on both."""
    from test_resume import make_poisoned_manifest

    data = make_poisoned_manifest(tmp_path / "data", demo_data)
    save = tmp_path / "ckpt"
    args = override(pretrain_args(data, save, 2), "++task.nonfinite_loss=skip", "dataset.curriculum=0")
    log = train(ITER1, "tiny", *args, nproc=2)
    named = [line for line in log.splitlines() if "non-finite loss" in line and "poison.wav" in line]
    assert len(named) == 1, named  # the rank that had the clip names the batch's files
    skipped = [line for line in log.splitlines() if "skipped (non-finite loss on some rank)" in line]
    assert len(skipped) == 2, skipped  # both ranks skip the same update
    assert parse_metrics(log, "train")[-1]["nonfinite_skipped"] == 1
    state = checkpoint(save)
    assert num_updates(state) == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
