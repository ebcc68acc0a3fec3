"""``model.init_from``: continuing pre-training, and tokenizer training, from an existing model.

The official-layout checkpoints of the oracle (``tests/data/oracle``: ``beats_small.pt``,
``beats_small_finetuned.pt``, ``tokenizer_small.pt``) and checkpoints of this project start a run;
the architecture comes from them, every part loads strictly, a wrong file fails before training.
The end-to-end tests run ``fairseq-hydra-train`` with the continue recipe: the loss falls, the
checkpoints reload with ``beats_fairseq.load``, a killed and relaunched run ends bitwise equal.
"""

import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

import beats_fairseq
from beats_fairseq.checkpoint import CheckpointKeyError, backbone_to_official
from beats_fairseq.cli.convert import fairseq_checkpoint
from beats_fairseq.models.beats import BeatsConfig, BeatsModel
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig
from beats_fairseq.modules.backbone import ARCH_FIELDS
from beats_fairseq.tasks.beats_pretraining import BeatsPretrainingConfig, BeatsPretrainingTask
from beats_fairseq.tasks.beats_tokenizer_training import (
    BeatsTokenizerTrainingTask,
    BeatsTokenizerTrainingTaskConfig,
)

from conftest import REPO, TINY_BEATS
from oracle_checks import PARITY_TOL
from test_distributed import checkpoint, num_updates, override, train, train_and_kill
from test_resume import assert_identical, assert_nested_equal

CONTINUE = REPO / "examples" / "beats_continue"
TOKENIZER = REPO / "examples" / "beats_tokenizer"


def recipe_model(config_dir, name, **values):
    """The model section of a recipe as fairseq sees it (the schema's defaults under the yaml's values)."""
    schema = BeatsConfig if config_dir.name != "beats_tokenizer" else BeatsTokenizerConfig
    yaml = OmegaConf.load(config_dir / f"{name}.yaml").model
    cfg = OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in yaml.items() if k != "_name"}, values)
    cfg._name = yaml._name
    return cfg


def pretraining_task(tmp_path):
    return BeatsPretrainingTask.setup_task(OmegaConf.structured(BeatsPretrainingConfig(data=str(tmp_path), seed=1)))


def tokenizer_task(tmp_path):
    cfg = OmegaConf.structured(BeatsTokenizerTrainingTaskConfig(data=str(tmp_path), seed=1))
    return BeatsTokenizerTrainingTask.setup_task(cfg)


def messages(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def own_beats_checkpoint(path, **overrides):
    """A ``beats`` checkpoint of this project (random-projection labels, ``TINY_BEATS`` sizes)."""
    torch.manual_seed(5)
    model = BeatsModel(OmegaConf.structured(BeatsConfig(**{**TINY_BEATS, **overrides})))
    torch.save(fairseq_checkpoint(model, "test"), path)
    return model


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- pre-training, in process
def test_official_model_and_tokenizer_start_a_pretraining_run(oracle, tmp_path, caplog):
    """What fairseq-hydra-train builds before update 1: the official backbone, its architecture,
    the recipe's regularisation, a new predictor for the official tokenizer's 32 codes."""
    official = oracle("beats_small")
    cfg = recipe_model(CONTINUE, "tiny", init_from=str(oracle.dir / "beats_small.pt"),
                       tokenizer_path=str(oracle.dir / "tokenizer_small.pt"))
    with caplog.at_level(logging.INFO):
        model = pretraining_task(tmp_path).build_model(cfg)
    assert equal_states(backbone_to_official(model.state_dict()), official["model"])
    assert {k: cfg[k] for k in ARCH_FIELDS} == {k: official["cfg"][k] for k in ARCH_FIELDS}
    # regularisation stays the recipe's (the official cfg holds fine-tuning values: decay 0.6, LayerDrop 0.05)
    assert cfg.layer_wise_gradient_decay_ratio == 1.0 and cfg.encoder_layerdrop == 0.0
    assert cfg.codebook_size == 32 and model.num_codes == 32 and model.frozen_tokenizer is not None
    [arch] = messages(caplog, "architecture from")
    assert "beats_small.pt" in arch and "encoder_embed_dim: 768 -> 64" in arch and "conv_bias" not in arch
    [parts] = messages(caplog, "label head initialised afresh")
    assert "the checkpoint holds none: encoder model" in parts
    inputs = oracle("inputs")
    with torch.no_grad():
        features, _ = model.eval().extract_features(inputs["source"], inputs["padding_mask"])
    torch.testing.assert_close(features, oracle("model_outputs")["features"], **PARITY_TOL)


def test_a_finetuned_official_model_gives_its_backbone(oracle, tmp_path):
    official = oracle("beats_small_finetuned")["model"]
    cfg = recipe_model(CONTINUE, "tiny", init_from=str(oracle.dir / "beats_small_finetuned.pt"))
    model = pretraining_task(tmp_path).build_model(cfg)
    backbone = {k: v for k, v in official.items() if not k.startswith("predictor.")}
    assert equal_states(backbone_to_official(model.state_dict()), backbone)


def test_own_beats_checkpoint_brings_its_predictor_when_the_codebook_matches(tmp_path, caplog):
    path = tmp_path / "own.pt"
    own = own_beats_checkpoint(path)  # 64 codes, 1 predictor layer
    task = pretraining_task(tmp_path)
    cfg = recipe_model(CONTINUE, "tiny", init_from=str(path), codebook_size=64, codebook_dim=16,
                       label_predictor_layers=2)
    with caplog.at_level(logging.INFO):
        model = task.build_model(cfg)
    assert equal_states(model.state_dict(), own.state_dict())  # the same random projection: everything equal
    assert cfg.label_predictor_layers == 1
    assert "label_predictor_layers: 2 -> 1" in messages(caplog, "architecture from")[0]
    assert messages(caplog, "backbone, label predictor and label head from")

    caplog.clear()
    cfg = recipe_model(CONTINUE, "tiny", init_from=str(path), codebook_size=32, label_predictor_layers=2)
    with caplog.at_level(logging.INFO):
        model = task.build_model(cfg)
    assert equal_states(model.backbone.state_dict(), own.backbone.state_dict())
    assert len(model.label_predictor.layers) == 2 and model.num_codes == 32
    [parts] = messages(caplog, "initialised afresh")
    assert "it predicts 64 codes, the labels have 32" in parts


def test_models_rebuilt_from_their_checkpoint_never_read_init_from(tmp_path):
    path = tmp_path / "own.pt"
    own_beats_checkpoint(path)
    cfg = recipe_model(CONTINUE, "tiny", init_from=str(path), codebook_size=64)
    task = pretraining_task(tmp_path)
    task.build_model(cfg)
    path.unlink()
    task.build_model(cfg, from_checkpoint=True)
    with pytest.raises(FileNotFoundError, match="own.pt"):
        task.build_model(cfg)


def test_a_wrong_or_mismatched_checkpoint_fails_naming_file_and_keys(oracle, tmp_path):
    task = pretraining_task(tmp_path)
    tokenizer = str(oracle.dir / "tokenizer_small.pt")
    with pytest.raises(ValueError, match=r"model.init_from='.*tokenizer_small.pt' holds a tokenizer model"):
        task.build_model(recipe_model(CONTINUE, "tiny", init_from=tokenizer))
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        task.build_model(recipe_model(CONTINUE, "tiny", init_from=str(tmp_path / "nothing.pt")))
    state = oracle("beats_small")
    del state["model"]["encoder.layers.1.fc2.bias"]
    state["model"]["encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointKeyError, match=r"(?s)broken.pt.*missing keys \(1\).*layers.1.fc2.bias.*extra"):
        task.build_model(recipe_model(CONTINUE, "tiny", init_from=str(tmp_path / "broken.pt")))
    own_beats_checkpoint(tmp_path / "own.pt")
    state = torch.load(tmp_path / "own.pt", weights_only=True)
    state["model"]["label_head.extra"] = state["model"].pop("label_head.bias")
    torch.save(state, tmp_path / "own_broken.pt")
    with pytest.raises(CheckpointKeyError, match=r"(?s)own_broken.pt.*missing keys \(1\).*label_head.bias.*extra"):
        task.build_model(recipe_model(CONTINUE, "tiny", init_from=str(tmp_path / "own_broken.pt")))
    cfg = recipe_model(TOKENIZER, "tiny", init_from=str(oracle.dir / "beats_small.pt"),
                       teacher_path=str(oracle.dir / "beats_small.pt"))
    with pytest.raises(ValueError, match=r"beats_small.pt' holds a encoder model .* takes a tokenizer"):
        tokenizer_task(tmp_path).build_model(cfg)


# --------------------------------------------------------------------------- tokenizer, in process
def test_official_tokenizer_starts_a_tokenizer_run(oracle, tmp_path, caplog):
    official = oracle("tokenizer_small")
    cfg = recipe_model(TOKENIZER, "tiny", init_from=str(oracle.dir / "tokenizer_small.pt"),
                       teacher_path=str(oracle.dir / "beats_small.pt"), codebook_size=8, quant_dim=4)
    with caplog.at_level(logging.INFO):
        model = tokenizer_task(tmp_path).build_model(cfg)
    assert (cfg.codebook_size, cfg.quant_dim, cfg.conv_bias, cfg.teacher_dim) == (32, 16, True, 64)
    assert "codebook_size: 8 -> 32" in messages(caplog, "architecture from")[0]
    assert "estimator initialised afresh (it has none" in messages(caplog, "model.init_from")[0]
    ours = model.to_official()["model"]
    assert equal_states(ours, official["model"])  # backbone, quantizer and codebook
    assert model.quantize.initialised  # no k-means over the loaded codebook
    inputs = oracle("inputs")
    labels = model.eval().extract_labels(inputs["source"], inputs["padding_mask"])
    assert torch.equal(labels, oracle("tokenizer_outputs")["labels"].view_as(labels))


def test_own_tokenizer_brings_its_estimator_and_a_fresh_usage_count(oracle, tmp_path):
    task = tokenizer_task(tmp_path)
    cfg = recipe_model(TOKENIZER, "tiny", teacher_path=str(oracle.dir / "beats_small.pt"))
    first = task.build_model(cfg)
    first.quantize.last_used.fill_(500)  # bookkeeping of the run that wrote the file
    path = tmp_path / "tokenizer.pt"
    torch.save(fairseq_checkpoint(first, "test"), path)
    model = task.build_model(recipe_model(TOKENIZER, "tiny", init_from=str(path),
                                          teacher_path=str(oracle.dir / "beats_small.pt")))
    fresh = {"quantize.last_used", "quantize.tracking_from"}
    ours, theirs = model.state_dict(), first.state_dict()
    assert equal_states({k: v for k, v in ours.items() if k not in fresh},
                        {k: v for k, v in theirs.items() if k not in fresh})
    assert int(model.quantize.last_used.max()) < 0  # this run counts its own updates


# --------------------------------------------------------------------------- through fairseq-hydra-train
def continue_args(data, oracle, save):
    return [f"task.data={data}", f"checkpoint.save_dir={save}", f"model.init_from={oracle.dir / 'beats_small.pt'}",
            f"model.tokenizer_path={oracle.dir / 'tokenizer_small.pt'}", "dataset.batch_size=8",
            "optimization.max_update=12", "checkpoint.save_interval_updates=6", "dataset.validate_interval_updates=6",
            "common.log_interval=3", "lr_scheduler.warmup_updates=2", "optimization.lr=[0.002]"]


@pytest.mark.slow
def test_continue_official_model_loss_falls_reloads_and_resumes_exactly(demo_data, oracle, tmp_path):
    ref = tmp_path / "ref"
    args = continue_args(demo_data, oracle, ref)
    log = train(CONTINUE, "tiny", *args)
    losses = [float(x) for x in re.findall(r"\[train_inner\].* loss=([0-9.]+),", log)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses  # ln 32 = 3.47 at the start
    model = beats_fairseq.load(str(ref / "checkpoint_last.pt"))
    official = oracle("beats_small")["cfg"]
    assert type(model) is BeatsModel and model.num_codes == 32
    assert all(getattr(model.cfg, k) == official[k] for k in ARCH_FIELDS)
    # killed right after the checkpoint at update 6, relaunched with the same command
    save = tmp_path / "resumed"
    killed = train_and_kill(CONTINUE, "tiny", *override(args, f"checkpoint.save_dir={save}"), after_updates=6)
    assert num_updates(checkpoint(save)) == 6 and "architecture from" in killed
    resumed = train(CONTINUE, "tiny", *override(args, f"checkpoint.save_dir={save}"))
    assert "@ 6 updates" in resumed
    a, b = checkpoint(ref), checkpoint(save)
    assert num_updates(a) == num_updates(b) == 12
    assert_identical(a["model"], b["model"])
    assert_nested_equal(a["last_optimizer_state"], b["last_optimizer_state"])


@pytest.mark.slow
def test_tokenizer_training_continues_an_official_tokenizer(demo_data, oracle, tmp_path):
    save = tmp_path / "tok"
    log = train(TOKENIZER, "tiny", f"task.data={demo_data}", f"checkpoint.save_dir={save}",
                f"model.init_from={oracle.dir / 'tokenizer_small.pt'}", f"model.teacher_path={oracle.dir / 'beats_small.pt'}",
                "dataset.batch_size=8", "optimization.max_update=4", "checkpoint.save_interval_updates=4",
                "dataset.validate_interval_updates=4", "lr_scheduler.warmup_updates=1")
    assert "k-means" not in log  # the official codebook is trained on, not replaced
    tokenizer = beats_fairseq.load(str(save / "checkpoint_last.pt"))
    official = oracle("tokenizer_small")["model"]
    assert tokenizer.codebook_size == 32
    assert not torch.equal(tokenizer.quantize.embedding.weight, official["quantize.embedding.weight"])  # it trained
    cosine = torch.nn.functional.cosine_similarity(tokenizer.quantize.embedding.weight,
                                                   official["quantize.embedding.weight"])
    assert float(cosine.mean()) > 0.5  # ... from the official codebook
