"""Tokenizer training: teachers, task, distillation criterion, a tiny run and checkpoint reloading."""

import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from beats_fairseq.criterions.beats_tokenizer_distillation import BeatsTokenizerDistillationCriterion
from beats_fairseq.data.audio import read_audio
from beats_fairseq.data.manifest import read_manifest
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig
from beats_fairseq.tasks.beats_tokenizer_training import (
    BeatsTokenizerTrainingTask,
    BeatsTokenizerTrainingTaskConfig,
)
from beats_fairseq.loading import load_teacher

from conftest import REPO, run_train
from oracle_checks import PARITY_TOL

TINY = dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, conv_pos=32, conv_pos_groups=16, dropout=0.0, attention_dropout=0.0,
            codebook_size=32, quant_dim=16, estimator_layers=1, dead_code_interval=10)


STEPS = 30


def model_cfg(**kw):
    cfg = OmegaConf.structured(BeatsTokenizerConfig(**dict(TINY, **kw)))
    cfg._name = "beats_tokenizer"
    return cfg


def demo_waves(demo_data, split="train", num=None, seconds=3.0):
    manifest = read_manifest(str(demo_data / f"{split}.tsv"))
    num = len(manifest) if num is None else num
    return torch.stack([read_audio(manifest.abspath(i))[: int(16000 * seconds)] for i in range(num)])


def test_teachers_features_and_logits(oracle):
    features = load_teacher(str(oracle.dir / "beats_small.pt"))
    assert features.target == "features" and features.dim == 64
    logits = load_teacher(str(oracle.dir / "beats_small_finetuned.pt"))
    assert logits.target == "logits" and logits.dim == 5
    inputs = oracle("inputs")
    out, mask = logits(inputs["source"], inputs["padding_mask"])
    ref = oracle("finetuned_outputs")["intermediates"]["frame_logits"]
    torch.testing.assert_close(out, ref, **PARITY_TOL)
    assert torch.equal(mask, oracle("fbank")["patch_padding_mask"])
    for teacher in (features, logits):  # frozen for good
        parent = torch.nn.Module()
        parent.t = teacher.model
        parent.train()
        assert not teacher.model.training
        assert not any(p.requires_grad for p in teacher.model.parameters())
    with pytest.raises(ValueError, match="tokenizer_small.pt"):
        load_teacher(str(oracle.dir / "tokenizer_small.pt"))
    encoder = load_teacher(str(oracle.dir / "beats_small_finetuned.pt"), target="features")  # its encoder output
    assert encoder.target == "features" and encoder.dim == 64
    with pytest.raises(ValueError, match="needs a model with per-patch logits"):
        load_teacher(str(oracle.dir / "beats_small.pt"), target="logits")


def test_teacher_layer_distils_that_layer(oracle):
    """model.teacher_layer=k: the targets are encoder layer k's output (intermediates of the oracle)."""
    inputs = oracle("inputs")
    last = load_teacher(str(oracle.dir / "beats_small.pt"))
    first = load_teacher(str(oracle.dir / "beats_small.pt"), layer=0)
    out0, _ = first(inputs["source"], inputs["padding_mask"])
    ref0, _ = first.model.backbone.extract_features(inputs["source"], inputs["padding_mask"], layer=0)
    out_last, _ = last(inputs["source"], inputs["padding_mask"])
    assert torch.equal(out0, ref0) and out0.shape == out_last.shape
    assert not torch.allclose(out0, out_last)
    layers = len(first.model.backbone.encoder.layers)
    with pytest.raises(ValueError, match="teacher layer"):
        load_teacher(str(oracle.dir / "beats_small.pt"), layer=layers)
    with pytest.raises(ValueError, match="teacher layer"):
        load_teacher(str(oracle.dir / "beats_small_finetuned.pt"), target="logits", layer=0)


def test_task_takes_teacher_dim_from_the_teacher(oracle, tmp_path):
    task = BeatsTokenizerTrainingTask(OmegaConf.structured(BeatsTokenizerTrainingTaskConfig(data=str(tmp_path))))
    cfg = model_cfg(teacher_path=str(oracle.dir / "beats_small_finetuned.pt"))
    model = task.build_model(cfg)
    assert cfg.teacher_dim == 5 and model.estimator.proj_out.out_features == 5
    assert model.teacher is not None and model.teacher.target == "logits"
    assert not any(k.startswith("teacher") for k in model.state_dict())  # teacher never saved
    with pytest.raises(ValueError, match="teacher_dim=7"):
        task.build_model(model_cfg(teacher_path=str(oracle.dir / "beats_small.pt"), teacher_dim=7))
    rebuilt = task.build_model(model_cfg(teacher_path="/nonexistent.pt", teacher_dim=5), from_checkpoint=True)
    assert rebuilt.teacher is None  # checkpoints reload without the teacher
    with pytest.raises(FileNotFoundError, match="nonexistent.pt"):
        task.build_model(model_cfg(teacher_path="/nonexistent.pt"))


def test_criterion_with_padding_and_logged_metrics(oracle):
    task = BeatsTokenizerTrainingTask(OmegaConf.structured(BeatsTokenizerTrainingTaskConfig(data="unused")))
    torch.manual_seed(0)
    model = task.build_model(model_cfg(teacher_path=str(oracle.dir / "beats_small.pt"))).train()
    crit = BeatsTokenizerDistillationCriterion(task)
    inputs = oracle("inputs")
    sample = {"id": torch.arange(2), "net_input": {"source": inputs["source"], "padding_mask": inputs["padding_mask"]}}
    loss, size, log = crit(model, sample)
    assert size == 144 + 125 == log["count"]  # patches 125..143 of clip 1 are padding
    assert -size <= log["cosine"] <= size and log["commitment"] >= 0
    torch.testing.assert_close(torch.tensor(log["loss"]), torch.tensor(size - log["cosine"] + log["commitment"]))
    assert log["code_counts"].shape == (32,) and log["code_counts"].sum() == size
    loss.backward()
    assert model.backbone.patch_embedding.weight.grad.abs().sum() > 0


def test_tiny_distillation_learns_and_keeps_the_codebook_used(oracle, demo_data):
    """A few optimizer steps in-process: cosine rises, codes stay far from collapse (1/32).

    Teacher targets are computed once and passed in ``net_input`` (``targets``), which the
    model accepts in place of calling its teacher, to keep the test fast.
    """
    torch.manual_seed(0)
    waves = demo_waves(demo_data, num=48, seconds=2.0)
    task = BeatsTokenizerTrainingTask(OmegaConf.structured(BeatsTokenizerTrainingTaskConfig(data=str(demo_data))))
    model = task.build_model(model_cfg(teacher_path=str(oracle.dir / "beats_small.pt"))).train()
    targets = torch.cat([model.teacher(waves[i:i + 16])[0] for i in range(0, len(waves), 16)])
    crit = BeatsTokenizerDistillationCriterion(task)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
    cosines, usages = [], []
    for step in range(STEPS):
        idx = torch.randint(0, len(waves), (8,))
        sample = {"id": idx, "net_input": {"source": waves[idx], "targets": targets[idx]}}
        loss, size, log = crit(model, sample)
        opt.zero_grad()
        (loss / size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        cosines.append(log["cosine"] / size)
        usages.append(float(model.quantize.statistics(log["code_counts"])["usage"]))  # last dead_code_interval updates
    print("cosine", [round(c, 3) for c in cosines], "usage", usages)
    assert sum(cosines[-5:]) / 5 > sum(cosines[:3]) / 3 + 0.3, cosines
    assert sum(cosines[-5:]) / 5 > 0.7, cosines
    assert min(usages[-5:]) >= 0.5, usages
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labels = torch.cat([model.extract_labels(waves[i:i + 16]) for i in range(0, len(waves), 16)]).flatten()
    counts = torch.bincount(labels, minlength=32).float()
    probs = counts[counts > 0] / counts.sum()
    print("eval usage", (counts > 0).float().mean(), "perplexity", torch.exp(-(probs * probs.log()).sum()))
    assert (counts > 0).float().mean() >= 0.5 and torch.exp(-(probs * probs.log()).sum()) > 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _metric(log, split, key):
    values = [float(v) for v in re.findall(rf"\[{split}\]\[INFO\] - epoch .*?\| {key} ([-0-9.]+)", log)]
    assert values, f"no {split} {key} in the log:\n{log[-3000:]}"
    return values


RELOAD = """
import sys, torch, beats_fairseq
from fairseq import checkpoint_utils
from beats_fairseq.loading import load_frozen_tokenizer
path = sys.argv[1]
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
assert type(models[0]).__name__ == "BeatsTokenizerModel", type(models[0])
assert type(task).__name__ == "BeatsTokenizerTrainingTask", type(task)
assert models[0].teacher is None and cfg.model.teacher_dim > 0
model = beats_fairseq.load(path)
assert not model.training and model.quantize.initialised
frozen = load_frozen_tokenizer(path)
x = torch.randn(2, 32000) * 0.1
a, b, c = model.extract_labels(x), models[0].eval().extract_labels(x), frozen.extract_labels(x)
assert a.shape == (2, 96) and torch.equal(a, b) and torch.equal(a, c)
official = beats_fairseq.from_official(model.to_official())
assert torch.equal(official.extract_labels(x), a)
print("RELOAD-OK", (torch.bincount(a.flatten(), minlength=32) > 0).sum().item())
"""


@pytest.mark.slow
def test_fairseq_tokenizer_run_and_reload(iter1_run, demo_data, tmp_path):
    """fairseq-hydra-train with tiny.yaml, teacher = the tiny iter1 model; reload in a new process."""
    iter1_dir, _ = iter1_run
    save_dir = tmp_path / "checkpoints"
    log = run_train(
        REPO / "examples" / "beats_tokenizer", "tiny",
        f"task.data={demo_data}", f"checkpoint.save_dir={save_dir}",
        f"model.teacher_path={iter1_dir / 'checkpoint_last.pt'}",
        "optimization.max_update=48", "dataset.validate_interval_updates=24", "dataset.validate_interval=1000",
        "checkpoint.save_interval_updates=24", "checkpoint.save_interval=1000", "common.log_interval=8",
    )
    train_cos, valid_cos = _metric(log, "train", "cosine"), _metric(log, "valid", "cosine")
    assert len(train_cos) == 6 and len(valid_cos) == 2, (train_cos, valid_cos)  # 8 updates per epoch
    assert train_cos[-1] > train_cos[0] + 0.3 and valid_cos[-1] > 0.5, (train_cos, valid_cos)
    assert _metric(log, "valid", "code_usage")[-1] >= 0.3  # share of the 32 codes used on the valid set
    assert _metric(log, "train", "code_usage")[-1] >= 0.5
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(save_dir / "checkpoint_last.pt")],
                          capture_output=True, text=True, cwd="/")
    assert "RELOAD-OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["tiny", "small", "tokenizer_as2m", "tokenizer_as2m_supervised_teacher"])
def test_recipes_list_every_tunable_and_follow_the_paper(name):
    import dataclasses

    from beats_fairseq.criterions.beats_tokenizer_distillation import BeatsTokenizerDistillationConfig
    from beats_fairseq.tasks.audio_task import RESUME_FIELDS

    cfg = OmegaConf.load(REPO / "examples" / "beats_tokenizer" / f"{name}.yaml")
    for section, schema in (("task", BeatsTokenizerTrainingTaskConfig), ("model", BeatsTokenizerConfig),
                            ("criterion", BeatsTokenizerDistillationConfig)):
        # one supported value, not tunables
        fixed = {"_name", "seed", "activation_fn", "layer_norm_first", *RESUME_FIELDS}
        fields = {f.name for f in dataclasses.fields(schema) if f.name not in fixed}
        keys = set(cfg[section]) - {"_name"}
        assert keys == fields, (section, sorted(fields - keys), sorted(keys - fields))
        OmegaConf.merge(OmegaConf.structured(schema), cfg[section])  # types check
    assert cfg.task._name == "beats_tokenizer_training" and cfg.model._name == "beats_tokenizer"
    assert cfg.criterion._name == "beats_tokenizer_distillation"
    if name in ("tiny", "small"):  # the paper values below are the AS-2M recipes
        return
    world = cfg.distributed_training.distributed_world_size
    seconds = cfg.dataset.max_tokens * world * cfg.optimization.update_freq[0] / 16000
    assert seconds == 1400 and cfg.optimization.max_update == 400000
    assert cfg.lr_scheduler.warmup_updates == 32000 and cfg.lr_scheduler.power == 1.0
    assert cfg.optimizer.adam_betas == "(0.9,0.98)" and cfg.optimizer.weight_decay == 0.01
    assert (cfg.model.codebook_size, cfg.model.quant_dim, cfg.model.estimator_layers) == (1024, 256, 3)
    supervised = name.endswith("supervised_teacher")
    assert cfg.optimization.lr == [5e-4 if supervised else 5e-5]
    assert cfg.model.teacher_target == ("logits" if supervised else "features")
