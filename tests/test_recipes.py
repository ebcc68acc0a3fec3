"""Recipe values the user must give fail fast, naming the key (fairseq would silently use None)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
REQUIRED = re.compile(r"^\s+(\w+): \$\{beats_required:model\.(\w+)\}", re.M)


def required_keys():
    return {str(p.relative_to(REPO)): REQUIRED.findall(p.read_text()) for p in sorted(REPO.glob("examples/*/*.yaml"))}


def test_model_paths_users_must_give_are_marked_required():
    keys = required_keys()
    for name in ("beats_iter2/tiny.yaml", "beats_iter3/pretrain_as2m.yaml"):
        assert keys[f"examples/{name}"] == [("tokenizer_path", "tokenizer_path")]
    assert keys["examples/beats_tokenizer/tokenizer_as2m.yaml"] == [("teacher_path", "teacher_path")]
    for name in ("iter3", "small"):
        assert keys[f"examples/beats_continue/{name}.yaml"] == [("init_from", "init_from"),
                                                                ("tokenizer_path", "tokenizer_path")]
    for name in ("tiny", "as2m", "as20k", "esc50", "spcv2"):
        assert keys[f"examples/beats_finetune/{name}.yaml"] == [("pretrained_path", "pretrained_path")]
    # a plain ??? on a model field turns into None inside fairseq: never use it there
    for path in REPO.glob("examples/*/*.yaml"):
        model = OmegaConf.load(path).get("model", {})
        assert all(not OmegaConf.is_missing(model, k) for k in model), path


def test_resolver_names_the_key():
    sys.path.insert(0, str(REPO))
    from hydra_plugins.beats_fairseq_resolver import beats_required  # noqa: F401  (registers the resolver)

    cfg = OmegaConf.create({"model": {"tokenizer_path": "${beats_required:model.tokenizer_path}"}})
    with pytest.raises(Exception, match=r"model.tokenizer_path is required by this recipe: add model.tokenizer_path="):
        OmegaConf.to_container(cfg, resolve=True)
    cfg.model.tokenizer_path = "tok.pt"  # given on the command line: no error
    assert OmegaConf.to_container(cfg, resolve=True) == {"model": {"tokenizer_path": "tok.pt"}}


def test_iter2_launch_without_tokenizer_fails_before_training(tmp_path):
    train = Path(sys.executable).with_name("fairseq-hydra-train")
    cmd = [str(train), "--config-dir", str(REPO / "examples/beats_iter2"), "--config-name", "tiny",
           f"task.data={tmp_path}", f"checkpoint.save_dir={tmp_path / 'ckpt'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "model.tokenizer_path is required by this recipe" in out.stdout + out.stderr
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for d in ("beats_iter1", "beats_iter2", "beats_iter3",
                                                                           "beats_continue")
                                        for p in (REPO / "examples" / d).glob("*.yaml")))
def test_pretraining_recipes_list_every_tunable(path):
    """Every field of the model, task and criterion configs is in each pre-training yaml (no `+` overrides);
    the continue recipes hold no architecture (it comes from model.init_from)."""
    import dataclasses

    from beats_fairseq.criterions.beats_mam import BeatsMamConfig
    from beats_fairseq.models.beats import BeatsConfig
    from beats_fairseq.modules.backbone import ARCH_FIELDS
    from beats_fairseq.tasks.audio_task import RESUME_FIELDS
    from beats_fairseq.tasks.beats_pretraining import BeatsPretrainingConfig

    cfg = OmegaConf.load(REPO / path)
    fixed = {"_name", "seed", "activation_fn", "layer_norm_first", *RESUME_FIELDS}  # one supported value
    if "beats_continue" in path:
        fixed.update(ARCH_FIELDS)
    if "beats_iter1" in path:
        fixed.add("precomputed_labels")  # iter1 labels come from the random projection
    elif "beats_iter" in path or path.endswith("iter3.yaml"):
        # the random projection is iter1's; the codebook size is written from the trained tokenizer
        fixed.update(("codebook_size", "codebook_dim", "tokenizer_seed"))
    for section, schema in (("model", BeatsConfig), ("task", BeatsPretrainingConfig), ("criterion", BeatsMamConfig)):
        fields = {f.name for f in dataclasses.fields(schema) if f.name not in fixed}
        keys = set(cfg[section]) - {"_name"}
        assert keys == fields, (section, sorted(fields - keys), sorted(keys - fields))


# What may differ between the recipes of successive iterations at one scale; all else is shared.
ITERATION_KEYS = {"checkpoint.save_dir", "task.precomputed_labels", "model.tokenizer_path", "model.codebook_size",
                  "model.codebook_dim", "model.tokenizer_seed"}


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("scale", sorted(p.stem for p in (REPO / "examples" / "beats_iter1").glob("*.yaml")))
def test_iteration_recipes_share_their_blocks(scale):
    """iter1, iter2 and iter3 at one scale differ only in the tokenizer and the output folder."""
    recipes = [_flat(OmegaConf.to_container(OmegaConf.load(REPO / "examples" / f"beats_iter{i}" / f"{scale}.yaml")))
               for i in (1, 2, 3)]
    for i, (a, b) in enumerate(zip(recipes, recipes[1:]), start=1):
        differ = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
        assert set(differ) <= ITERATION_KEYS, f"{scale}: iter{i} and iter{i + 1} differ in {set(differ) - ITERATION_KEYS}"


def test_architecture_overrides_for_a_random_init(capsys):
    """Fine-tuning recipes hold no architecture; beats-config-dir prints a recipe's for random inits."""
    from beats_fairseq.cli import config_dir
    from beats_fairseq.modules.backbone import ARCH_FIELDS

    assert config_dir.main(["beats_iter1", "--architecture", "tiny"]) == 0
    printed = dict(item.split("=", 1) for item in capsys.readouterr().out.split())
    recipe = OmegaConf.load(REPO / "examples" / "beats_iter1" / "tiny.yaml").model
    assert printed == {f"++model.{k}": str(recipe[k]).lower() if isinstance(recipe[k], bool) else str(recipe[k])
                       for k in ARCH_FIELDS if k in recipe}
    assert config_dir.main(["beats_finetune", "--architecture", "tiny"]) == 1
    assert "sets no architecture field" in capsys.readouterr().err


def test_continue_recipe_derives_its_schedule_from_the_paper_recipe():
    """examples/beats_continue/iter3.yaml: the AS-2M pre-training recipe (iter3) but for the schedule its
    comments explain: a fifth of the peak LR, 1/40 of the updates, 10% warm-up, 1.4k s of audio per update."""
    scratch = _flat(OmegaConf.to_container(OmegaConf.load(REPO / "examples/beats_iter3/pretrain_as2m.yaml")))
    cont = _flat(OmegaConf.to_container(OmegaConf.load(REPO / "examples/beats_continue/iter3.yaml")))
    assert cont["optimization.lr"][0] == pytest.approx(scratch["optimization.lr"][0] / 5)
    assert cont["optimization.max_update"] * 40 == scratch["optimization.max_update"]
    assert cont["lr_scheduler.warmup_updates"] * 10 == cont["optimization.max_update"]
    audio = cont["dataset.max_tokens"] * cont["distributed_training.distributed_world_size"] / 16000
    assert audio * cont["optimization.update_freq"][0] == 1400
    schedule = {"optimization.lr", "optimization.max_update", "optimization.update_freq", "lr_scheduler.warmup_updates",
                "distributed_training.distributed_world_size", "model.init_from", "common.log_interval"}
    same = {k for k in cont if k.startswith(("optimizer.", "lr_scheduler.", "task.", "criterion.", "model."))} - schedule
    assert {k: cont[k] for k in same} == {k: scratch[k] for k in same}


def test_few_label_recipe_is_the_small_recipe_but_its_head_its_start_and_frozen_start():
    """examples/beats_finetune/small_few_labels.yaml (the pipeline's label budgets at --scale small) differs
    from small.yaml only where docs/small_scale.md measured it."""
    folder = REPO / "examples" / "beats_finetune"
    small, few = (_flat(OmegaConf.to_container(OmegaConf.load(folder / f"{name}.yaml")))
                  for name in ("small", "small_few_labels"))
    differ = {k for k in set(small) | set(few) if small.get(k, "<absent>") != few.get(k, "<absent>")}
    assert differ == {"checkpoint.save_dir", "model.head_pooling", "model.head_init", "model.freeze_encoder_updates"}
    assert few["model.head_pooling"] == "band_stats" and few["model.head_init"] == "probe" and 0 < few["model.freeze_encoder_updates"] <= few["optimization.max_update"]
