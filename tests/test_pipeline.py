"""beats-pipeline: planning and config composition (Hydra's), TensorBoard metrics, resume, summary and the probe;
the command and the library (``beats_fairseq.pipeline``)."""

import html
import json

import numpy as np
import pytest
import torch

from beats_fairseq.cli import pipeline
from beats_fairseq.evaluation import LabelledSplit
from beats_fairseq.models.beats_encoder import BeatsEncoderModel, BeatsEncoderModelConfig
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel
from beats_fairseq.pipeline import TINY_UPDATES, PipelineConfig, PipelineError, plan, prepare
from beats_fairseq.pipeline.events import last_metrics, read_curves
from beats_fairseq.probe import fit_and_score
from conftest import assert_picture

# the architecture of examples/beats_iter1/tiny.yaml (so the random probe baseline matches it)
TINY_ENCODER = dict(input_patch_size=16, embed_dim=64, encoder_layers=2, encoder_embed_dim=128,
                    encoder_ffn_embed_dim=256, encoder_attention_heads=4, conv_pos=32, conv_pos_groups=16,
                    relative_position_embedding=True, gru_rel_pos=True, deep_norm=True)
TINY_TOKENIZER = dict(input_patch_size=16, embed_dim=32, encoder_layers=1, encoder_embed_dim=64,
                      encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=16,
                      relative_position_embedding=True, gru_rel_pos=True, deep_norm=True, codebook_size=32, quant_dim=16,
                      kmeans_init=False, estimator_layers=0)


def given_finished_iter1_and_tokenizer(run):
    """Random tiny iter1 and tokenizer_iter1 checkpoints in ``run``, marked finished in its state.json."""
    torch.manual_seed(0)
    for stage, model in (("iter1", BeatsEncoderModel(BeatsEncoderModelConfig(**TINY_ENCODER))),
                         ("tokenizer_iter1", BeatsTokenizerModel(BeatsTokenizerConfig(**TINY_TOKENIZER)))):
        (run / stage / "checkpoints").mkdir(parents=True)
        torch.save(model.to_official(), run / stage / "checkpoints" / "checkpoint_last.pt")
    done = {"status": "done", "seconds": 12.0,
            "metrics": {"valid": {"loss": 5.0, "accuracy": 0.1, "code_usage": 0.9, "num_updates": 100}}}
    (run / "state.json").write_text(json.dumps({"version": 1, "stages": {"iter1": done, "tokenizer_iter1": done}}))


def run_pipeline(capsys, *argv):
    code = pipeline.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_plan_composes_every_stage_config(tmp_path, demo_data, capsys):
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "run", "--iterations", "3",
                             "--labels", "precomputed", "--dry-run", "dataset.num_workers=0",
                             "pretrain:optimization.max_update=7", "+tokenizer:model.new_key=3")
    assert code == 0, out
    names = [line.split("]")[1].split(":")[0].strip() for line in out.splitlines() if line.startswith("[stage")]
    assert names == ["iter1", "tokenizer_iter1", "labels_iter2", "iter2", "tokenizer_iter2", "labels_iter3", "iter3",
                     "tokenizers", "fbank", "probe"]
    run = tmp_path / "run"
    from omegaconf import OmegaConf

    iter3 = OmegaConf.load(run / "iter3" / "stage.yaml")
    assert iter3.model.tokenizer_path == str(run / "tokenizer_iter2" / "checkpoints" / "checkpoint_last.pt")
    assert iter3.task.precomputed_labels == str(run / "labels_iter3" / "labels") and iter3.task.crop == "start"
    assert iter3.checkpoint.save_dir == str(run / "iter3" / "checkpoints")
    assert iter3.optimization.max_update == 7 and iter3.dataset.num_workers == 0
    tok2 = OmegaConf.load(run / "tokenizer_iter2" / "stage.yaml")
    assert tok2.model.teacher_path == str(run / "iter2" / "checkpoints" / "checkpoint_last.pt")
    assert tok2.optimization.max_update == TINY_UPDATES["tokenizer"] and tok2.model.new_key == 3
    assert "new_key" not in OmegaConf.load(run / "iter1" / "stage.yaml").model
    assert "user_dir: ${beats_user_dir:}" in (run / "iter1" / "stage.yaml").read_text()  # left for Hydra


def test_unknown_override_and_missing_recipe_are_errors(tmp_path, demo_data, capsys):
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "r", "--dry-run", "model.no_such_key=1")
    assert code == 1 and "match no key" in out
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "r", "--dry-run",
                             "--tokenizer-config", "nope")
    assert code == 1 and "nope.yaml does not exist" in out and "available: small, tiny" in out
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "r", "--dry-run", "--supervised-teacher")
    assert code == 1 and "add --iterations 3" in out


def test_supervised_teacher_plans_a_finetune_stage(tmp_path, demo_data, capsys):
    from omegaconf import OmegaConf

    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "r", "--iterations", "3",
                             "--supervised-teacher", "--dry-run", "--no-probe")
    assert code == 0, out
    assert "[stage 4/6] finetune_iter2" in out and "skipped" not in out
    tok2 = OmegaConf.load(tmp_path / "r" / "tokenizer_iter2" / "stage.yaml")
    assert tok2.model.teacher_path.endswith("finetune_iter2/checkpoints/checkpoint_last.pt")
    assert tok2.model.teacher_target == "auto"  # logits for a classifier teacher (the end-to-end test's log)
    ft = OmegaConf.load(tmp_path / "r" / "finetune_iter2" / "stage.yaml")
    assert ft.model.pretrained_path.endswith("iter2/checkpoints/checkpoint_last.pt")

    # paper scale: the iter3+ tokenizer uses the supervised-teacher recipe (peak LR 5e-4, logits),
    # the iter2 tokenizer the self-supervised one (5e-5, features)
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", tmp_path / "base", "--scale", "base",
                             "--iterations", "3", "--supervised-teacher", "--dry-run", "--no-probe")
    assert code == 0, out
    tok1, tok2 = (OmegaConf.load(tmp_path / "base" / f"tokenizer_iter{i}" / "stage.yaml") for i in (1, 2))
    assert tok1.optimization.lr == [5e-5] and tok1.model.teacher_target == "features"
    assert tok2.optimization.lr == [5e-4] and tok2.model.teacher_target == "logits"
    assert tok2.optimization.max_update == 400000


def write_events(folder, tag, points):
    """TensorBoard scalars as fairseq writes them: ``folder/tag/events...``, one scalar per metric at step num_updates."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder / tag))
    for step, metrics in points:
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
    writer.close()


def test_metrics_are_read_from_tensorboard_events_and_a_resume_keeps_the_last_value(tmp_path):
    tb = tmp_path / "tensorboard"
    write_events(tb, "train_inner", [(10, {"loss": 5.5, "accuracy": 0.1}), (20, {"loss": 5.0, "accuracy": 0.2})])
    write_events(tb, "valid", [(20, {"loss": 5.1, "accuracy": 0.25, "code_usage": 0.9})])
    import time

    time.sleep(1.1)  # event files are named by the second they were created in: the resume comes later
    write_events(tb, "train_inner", [(20, {"loss": 4.0, "accuracy": 0.3}), (30, {"loss": 3.5, "accuracy": 0.4})])
    whole = next((tb / "valid").glob("events.*")).read_bytes()
    (tb / "valid" / "events.out.tfevents.9999999999.cut").write_bytes(whole[:-7])  # a run killed while writing
    curves = read_curves(tb)
    assert curves["train_inner"]["loss"] == ([10, 20, 30], [5.5, 4.0, 3.5])
    assert curves["valid"]["code_usage"][0] == [20]
    metrics = last_metrics(curves)
    assert metrics["train_inner"]["num_updates"] == 30 and metrics["train_inner"]["accuracy"] == pytest.approx(0.4)
    assert metrics["valid"] == {"loss": pytest.approx(5.1), "accuracy": 0.25, "code_usage": pytest.approx(0.9),
                                "num_updates": 20}
    assert "train" not in metrics and read_curves(tmp_path / "none") == {}


def test_library_plans_without_argparse(tmp_path, demo_data):
    import dataclasses

    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "r"), iterations=3, supervised_teacher=True,
                            eval="finetune", eval_seeds=2)
    stages = plan(config)
    assert [s.name for s in stages[:8]] == ["iter1", "tokenizer_iter1", "iter2", "finetune_iter2", "tokenizer_iter2",
                                            "iter3", "tokenizers", "fbank"]
    assert len(stages) == 8 + 4 * 2 and all(dataclasses.is_dataclass(s) for s in stages)
    by_name = {s.name: s for s in stages}
    # the labels of every iteration: iter1's random projection (in its checkpoint), then the distilled tokenizers
    diagnostics = by_name["tokenizers"]
    assert diagnostics.settings["labels"] == {"iter1": "iter1", "iter2": "tokenizer_iter1", "iter3": "tokenizer_iter2"}
    assert diagnostics.depends == [by_name[n] for n in ("iter1", "tokenizer_iter1", "tokenizer_iter2")]
    last = stages[-1]
    assert last.name == "eval_iter3_seed2" and last.encoder == "iter3" and last.score_split == "test"
    assert last.depends == [by_name["iter3"]] and last.settings["common.seed"] == 2
    assert last.output == tmp_path / "r" / "eval_iter3_seed2" / "score.json"
    random = by_name["eval_random_seed1"]
    assert random.depends == [] and random.pretrain is by_name["iter1"] and random.settings["model.pretrained_path"] is None
    assert by_name["tokenizer_iter2"].role == "supervised_tokenizer" and by_name["tokenizer_iter1"].role == "tokenizer"
    assert [s.name for s in plan(dataclasses.replace(config, evaluate=False))][-1] == "iter3"
    for bad, message in ((dict(iterations=2), "add --iterations 3"), (dict(eval_seeds=0), "--eval-seeds must be >= 1"),
                         (dict(data=str(tmp_path)), "no train.tsv"), (dict(eval="linear"), "eval 'linear'"),
                         (dict(recipes={"pretrainer": "x"}), "roles are")):
        with pytest.raises(PipelineError, match=message):
            plan(dataclasses.replace(config, **bad))


def test_init_from_plans_continued_iterations_and_evaluates_the_start(tmp_path, demo_data, oracle):
    import dataclasses

    model, tok = oracle.dir / "beats_small.pt", oracle.dir / "tokenizer_small.pt"
    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "r"), init_from=str(model), tokenizer=str(tok),
                            eval="finetune", eval_seeds=1)
    stages = {s.name: s for s in plan(config)}
    assert stages["tokenizers"].settings["labels"] == {"iter1": "tokenizer", "iter2": "tokenizer_iter1"}
    assert list(stages) == ["iter1", "tokenizer_iter1", "iter2", "tokenizers", "fbank", "eval_random_seed1",
                            "eval_start_seed1",
                            "eval_iter1_seed1", "eval_iter2_seed1"]
    iter1, iter2 = stages["iter1"], stages["iter2"]
    assert (iter1.config_dir, iter1.role, iter1.title) == ("beats_continue", "continue", "pre-training continued from start")
    assert iter1.settings["model.init_from"] == str(model) and iter1.settings["model.tokenizer_path"] == str(tok)
    assert iter2.settings["model.init_from"] == str(iter1.checkpoint)
    assert iter2.settings["model.tokenizer_path"] == str(stages["tokenizer_iter1"].checkpoint)
    assert stages["eval_start_seed1"].settings["model.pretrained_path"] == str(model)
    # without --tokenizer, a tokenizer is distilled from the model first; one iteration is allowed then
    names = [s.name for s in plan(dataclasses.replace(config, tokenizer=None, iterations=1, evaluate=False))]
    assert names == ["tokenizer_start", "iter1"]
    assert plan(dataclasses.replace(config, tokenizer=None))[0].settings["model.teacher_path"] == str(model)
    with pytest.raises(PipelineError, match="--tokenizer .*nope.pt: no such"):
        plan(dataclasses.replace(config, tokenizer=str(tmp_path / "nope.pt")))
    # without --init-from: iter1 from scratch, on the labels of --tokenizer (else the random projection)
    scratch = {s.name: s for s in plan(dataclasses.replace(config, init_from=None, iterations=1))}
    assert list(scratch) == ["iter1", "tokenizers", "fbank", "eval_random_seed1", "eval_iter1_seed1"]
    assert scratch["tokenizers"].settings["labels"] == {"iter1": "tokenizer"}  # the labels of --tokenizer
    assert (scratch["iter1"].config_dir, scratch["iter1"].role) == ("beats_iter1", "pretrain")
    assert scratch["iter1"].settings["model.tokenizer_path"] == str(tok) and "model.init_from" not in scratch["iter1"].settings
    names = [s.name for s in plan(dataclasses.replace(config, init_from=None, tokenizer=None, iterations=1))]
    assert names[:3] == ["iter1", "tokenizers", "fbank"]

    # composed: the continue recipe of the scale; a random init gets the start model's architecture
    stages = {s.name: s for s in prepare(dataclasses.replace(config, iterations=1))}
    assert stages["iter1"].config.model.init_from == str(model)
    assert stages["iter1"].config.optimization.max_update == TINY_UPDATES["pretrain"]
    official = oracle("beats_small")["cfg"]
    random = stages["eval_random_seed1"].config.model
    assert (random.encoder_embed_dim, random.conv_pos) == (official["encoder_embed_dim"], official["conv_pos"])


def compose_with(tmp_path, demo_data, *overrides, **options):
    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "r"), overrides=list(overrides), **options)
    return {s.name: s for s in prepare(config)}


def test_overrides_mean_what_they_mean_to_fairseq_hydra_train(tmp_path, demo_data):
    from beats_fairseq.pipeline.compose import compose_recipe
    from beats_fairseq.recipes import recipe_dir

    stages = compose_with(tmp_path, demo_data, "~model.label_predictor_layers", "++model.dropout=0.25",
                          "finetune:optimization.lr=[0.001]", "common.seed=7", "hydra.job.chdir=false",
                          "tokenizer:+model.teacher_extra=1", eval="finetune", eval_seeds=1)
    iter1, tok, ft = stages["iter1"].config, stages["tokenizer_iter1"].config, stages["eval_iter1_seed1"].config
    assert "label_predictor_layers" not in iter1.model  # ~: deleted (where the recipe has it: not in the tokenizer's)
    assert iter1.model.dropout == tok.model.dropout == ft.model.dropout == 0.25  # ++: everywhere
    assert list(ft.optimization.lr) == [0.001] and list(iter1.optimization.lr) == [0.002]
    assert iter1.common.seed == 7 and ft.common.seed == 1  # an evaluation run keeps the seed the pipeline gives it
    assert tok.model.teacher_extra == 1 and "teacher_extra" not in iter1.model
    assert stages["iter1"].hydra_overrides == ["hydra.job.chdir=false"]
    # the same composition as fairseq-hydra-train's (config dir, name, overrides), before the pipeline's paths
    alone = compose_recipe(recipe_dir("beats_iter1"), "tiny", ["~model.label_predictor_layers", "++model.dropout=0.25",
                                                                "common.seed=7"])
    assert iter1.model == alone.model and iter1.task.crop == alone.task.crop
    assert iter1.optimization.max_update == TINY_UPDATES["pretrain"] != alone.optimization.max_update
    assert iter1.checkpoint.save_dir == str(tmp_path / "r" / "iter1" / "checkpoints")
    text = (tmp_path / "r" / "iter1" / "stage.yaml").read_text()
    assert "hydra:" in text and "dir: ${checkpoint.save_dir}/hydra" in text  # the recipe's run folder stays

    for overrides, message in ((["pretrain:model.no_such=1"], r"append to your config use \+model.no_such=1"),
                               (["pretrain:+model.mask_prob=0.5"], "An item is already at 'model.mask_prob'"),
                               (["finetune:common.seed=3"], "the pipeline sets common.seed of stage eval_random_seed1"),
                               (["model.dropout=0.1,0.2"], "a sweep"), (["model.no_such_key=1"], "match no key"),
                               (["checkpoint.save_dir=/x"], "match no key")):
        with pytest.raises(PipelineError, match=message):
            compose_with(tmp_path, demo_data, *overrides, eval="finetune", eval_seeds=1)


def test_ctrl_c_marks_a_stage_interrupted_and_the_same_run_resumes_it(tmp_path, demo_data, monkeypatch):
    from beats_fairseq.pipeline import steps
    from beats_fairseq.pipeline.runner import Runner

    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "r"))
    stages = [s for s in plan(config) if s.kind == "fbank"]  # a stage that runs in this process

    def interrupted(stage, ctx, threads=None):
        raise KeyboardInterrupt

    def baseline(stage, ctx, threads=None):
        stage.output.write_text("{}")
        return {"metrics": {"fbank": {"metric": "accuracy", "value": 0.5}}}

    lines = []
    monkeypatch.setitem(steps.STEPS, "fbank", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Runner(config, stages, say=lines.append).run()
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["stages"]["fbank"]["status"] == "interrupted" and state["plan"] == ["fbank"]
    assert lines[-1] == "[stage 1/1] fbank interrupted: run the same command again to resume"
    monkeypatch.setitem(steps.STEPS, "fbank", baseline)
    summary = Runner(config, stages, say=lines.append).run()
    assert "[stage 1/1] fbank raw-fbank baseline on test (resuming) ..." in lines
    assert summary["evaluation"]["rows"] == {"fbank": {"mean": 0.5, "std": 0.0, "runs": [0.5]}}
    monkeypatch.setitem(steps.STEPS, "fbank", interrupted)  # finished: not run again
    lines.clear()
    assert Runner(config, stages, say=lines.append).run() == summary
    assert lines[0] == "[stage 1/1] fbank: finished earlier (0m00s), skipped"


def test_labels_stage_precomputes_in_this_process_with_the_pretraining_clip_settings(tmp_path, demo_data):
    from beats_fairseq.data.label_store import LabelStore
    from beats_fairseq.pipeline.compose import Composer
    from beats_fairseq.pipeline.steps import Context, run_step

    run = tmp_path / "run"
    given_finished_iter1_and_tokenizer(run)
    config = PipelineConfig(data=str(demo_data), out=str(run), labels="precomputed", evaluate=False)
    stages = {s.name: s for s in plan(config)}
    lines = []
    assert run_step(stages["labels_iter2"], Context(config, Composer(config), "cpu", lines.append)) == {"metrics": {}}
    iter2 = stages["iter2"].config
    assert iter2.task.precomputed_labels == str(run / "labels_iter2" / "labels") and iter2.task.crop == "start"
    for split in ("train", "valid"):
        store = LabelStore(str(run / "labels_iter2" / "labels"), split)
        assert store.meta["crop"]["max_sample_size"] == iter2.task.max_sample_size  # the task's clip settings
        assert store.meta["manifest"]["entries"] == (120 if split == "train" else 36)
        assert store.meta["command"].startswith(f"beats-precompute-labels --tokenizer {run / 'tokenizer_iter1'}")
    assert "labels (codebook 32) written" in (run / "labels_iter2" / "labels.log").read_text() and not lines


def split(labels, num_classes, multilabel=False):
    return LabelledSplit("s", "s.tsv", [list(ids) for ids in labels], num_classes, multilabel)


def test_probe_classifier_on_separable_features():
    rng = np.random.RandomState(0)
    centres = 3 * rng.randn(4, 8)
    y_train, y_eval = rng.randint(0, 4, 200), rng.randint(0, 4, 80)
    x_train = centres[y_train] + 0.3 * rng.randn(200, 8)
    x_eval = centres[y_eval] + 0.3 * rng.randn(80, 8)
    train, evaluated = split([[c] for c in y_train], 4), split([[c] for c in y_eval], 4)
    metric, value = fit_and_score(x_train, train, x_eval, evaluated)
    assert metric == "accuracy" and value == 1.0
    metric, value = fit_and_score(rng.randn(200, 8), train, rng.randn(80, 8), evaluated)
    assert value < 0.6  # noise features: about chance
    multi = split([[c, (c + 1) % 4] for c in y_train], 5, True)
    metric, value = fit_and_score(x_train, multi, x_eval, split([[c, (c + 1) % 4] for c in y_eval], 5, True))
    assert metric == "mAP" and value > 0.95  # class 4 has no positive: left out of the mAP


@pytest.mark.slow
def test_pipeline_resumes_after_finished_stages_and_probes_beside_a_random_encoder(tmp_path, demo_data, capsys):
    """iter1 and tokenizer_iter1 are marked finished: only iter2 (4 updates) and the probe run."""
    run = tmp_path / "run"
    given_finished_iter1_and_tokenizer(run)

    args = ["--data", demo_data, "--out", run, "--probe-train-split", "valid", "pretrain:optimization.max_update=4"]
    code, out = run_pipeline(capsys, *args)
    assert code == 0, out[-4000:]
    assert out.count("--probe-train-split is deprecated") == 1 and "use --eval-train-split" in out
    assert "[stage 1/6] iter1: finished earlier (0m12s), skipped" in out
    assert "[stage 2/6] tokenizer_iter1: finished earlier" in out
    assert "[stage 3/6] iter2 iter2 pre-training ..." in out and "[stage 6/6] probe" in out
    assert not (run / "iter1" / "train.log").exists() and not (run / "tokenizer_iter1" / "train.log").exists()
    assert (run / "iter2" / "stage.yaml").is_file() and (run / "iter2" / "checkpoints" / "checkpoint_last.pt").is_file()
    assert "loss" in (run / "iter2" / "train.log").read_text()

    state = json.loads((run / "state.json").read_text())
    names = ["iter1", "tokenizer_iter1", "iter2", "tokenizers", "fbank", "probe"]
    assert all(state["stages"][s]["status"] == "done" for s in names)
    summary = json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == names
    # the labels of every iteration against the classes of the labelled split (here valid)
    tokenizers = summary["tokenizers"]
    assert list(tokenizers) == ["iter1", "iter2"]
    assert tokenizers["iter1"]["tokenizer"] == "random projection" and "cosine_baseline" not in tokenizers["iter1"]
    assert tokenizers["iter2"]["tokenizer"] == "tokenizer_iter1" and -1 <= tokenizers["iter2"]["cosine_baseline"] <= 1
    for row in tokenizers.values():
        assert 0 < row["purity"] <= 1 and 0 <= row["nmi"] <= 1 and row["clips"] == 36 and row["patches"] > 36
    iter2 = summary["stages"][2]
    assert iter2["updates"] == 4 and iter2["valid_loss"] > 0 and 0 <= iter2["score"] <= 1 and iter2["code_usage"] > 0
    probe = {r["encoder"]: r for r in summary["probe"] if r["probe"] == "linear"}
    assert list(probe) == ["random", "iter1", "iter2"]
    assert all(r["metric"] == "accuracy" and 0 <= r["value"] <= 1 and r["eval_clips"] == r["train_clips"] == 36
               for r in summary["probe"])
    # the probes stopping early on valid are left out: valid is the split the probe is fit on here
    assert summary["evaluation"]["probes"] == {"linear": {e: r["value"] for e, r in probe.items()}}
    md = (run / "summary.md").read_text()
    assert "| iter2 | iter2 pre-training | 4 |" in md and "| random |" in md and "linear probe accuracy (test)" in md
    assert md.index("Best: ") < md.index("| encoder | accuracy on test") < md.index("| stage |")  # the answer first
    assert "| iter1 | random projection |" in md and "| iter2 | tokenizer_iter1 |" in md
    assert_picture(run / "report.png", min_width=1000, min_height=450)  # the bars and iter2 (the others are given)
    page = (run / "report.html").read_text()
    assert page.index("Best: ") < page.index("<td>iter2</td>") < page.index("<img") \
        < page.index("<td>iter2 pre-training</td>")  # the answer, the evaluation table, the curves, the stages
    assert list((run / "iter2" / "tensorboard").glob("*/events.out.tfevents.*"))  # TensorBoard logs per stage

    # everything is finished now: a second run trains nothing and prints the same table
    code, out = run_pipeline(capsys, *args)
    assert code == 0 and out.count("skipped") == 6 and "| random |" in out
    evaluation = summary["evaluation"]
    assert evaluation["metric"] == "accuracy" and evaluation["split"] == "test"
    assert list(evaluation["rows"]) == ["random", "fbank", "iter1", "iter2"]
    assert evaluation["rows"]["iter2"]["runs"] == [probe["iter2"]["value"]]
    assert (run / "iter2" / "train.log").read_text().count("=====") == 1  # launched once


@pytest.mark.slow
def test_supervised_teacher_pipeline_runs_iter3_plus_end_to_end(tmp_path, demo_data, capsys):
    """(iter1 -> tokenizer, given) -> iter2 -> fine-tune iter2 -> tokenizer from its per-patch logits -> iter3."""
    import beats_fairseq

    run = tmp_path / "run"
    given_finished_iter1_and_tokenizer(run)
    args = ["--data", demo_data, "--out", run, "--iterations", "3", "--supervised-teacher", "--no-probe",
            "optimization.max_update=4"]
    code, out = run_pipeline(capsys, *args)
    assert code == 0, out[-4000:]
    stages = ["iter1", "tokenizer_iter1", "iter2", "finetune_iter2", "tokenizer_iter2", "iter3"]
    summary = json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == stages
    assert all(r["status"] == "done" for r in summary["stages"])
    assert [r["updates"] for r in summary["stages"]] == [100, 100, 4, 4, 4, 4]  # the first two were given
    ckpt = {s: run / s / "checkpoints" / "checkpoint_last.pt" for s in stages}

    # each stage reads the previous one's checkpoint
    yaml = {s: (run / s / "stage.yaml").read_text() for s in stages[2:]}
    assert f"pretrained_path: {ckpt['iter2']}" in yaml["finetune_iter2"]
    assert f"teacher_path: {ckpt['finetune_iter2']}" in yaml["tokenizer_iter2"]
    assert f"tokenizer_path: {ckpt['tokenizer_iter2']}" in yaml["iter3"]
    assert f"tokenizer_path: {ckpt['tokenizer_iter1']}" in yaml["iter2"]
    # the iter3+ tokenizer distils the classifier's per-patch logits (6 demo classes), not its features
    assert "BeatsClassifierModel, target logits of size 6" in (run / "tokenizer_iter2" / "train.log").read_text()
    finetune = summary["stages"][3]
    assert finetune["score_name"] == "accuracy" and 0 <= finetune["score"] <= 1
    assert summary["stages"][4]["score_name"] == "cosine" and summary["stages"][4]["code_usage"] > 0
    # the report says that its iter3 is the paper's iter3+
    note = "iter3 is the paper's iter3+: its tokenizer (tokenizer_iter2) is distilled from iter2 fine-tuned"
    assert note in (run / "summary.md").read_text() and html.escape(note) in (run / "report.html").read_text()

    # the last tokenizer and the iter3 encoder load back and work together
    tokenizer = beats_fairseq.load(str(ckpt["tokenizer_iter2"]))
    encoder = beats_fairseq.load(str(ckpt["iter3"]))
    wav = torch.randn(2, 16000)
    labels = tokenizer.extract_labels(wav)
    assert labels.shape[0] == 2 and labels.dtype == torch.long and int(labels.max()) < 32
    features, _ = encoder.extract_features(wav)
    assert features.shape[:2] == (2, labels.shape[1]) and torch.isfinite(features).all()

    # a rerun trains nothing
    code, out = run_pipeline(capsys, *args)
    assert code == 0 and out.count("skipped") == 6


@pytest.mark.slow
def test_pipeline_continues_an_official_model_and_probes_it_beside_its_start(tmp_path, demo_data, oracle, capsys):
    import beats_fairseq
    from beats_fairseq.checkpoint import backbone_to_official

    run = tmp_path / "run"
    code, out = run_pipeline(capsys, "--data", demo_data, "--out", run, "--init-from", oracle.dir / "beats_small.pt",
                             "--tokenizer", oracle.dir / "tokenizer_small.pt", "--iterations", "1",
                             "pretrain:optimization.max_update=4")
    assert code == 0, out[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == ["iter1", "tokenizers", "fbank", "probe"]
    assert summary["stages"][0]["updates"] == 4
    linear = [r["encoder"] for r in summary["probe"] if r.get("probe", "linear") == "linear"]
    assert linear == ["random", "start", "iter1"]
    assert {r["probe"] for r in summary["probe"]} == {"linear", "weighted-layers", "mlp"}  # demo data has a valid split
    official = oracle("beats_small")
    continued = beats_fairseq.load(str(run / "iter1" / "checkpoints" / "checkpoint_last.pt"))
    assert continued.num_codes == 32 and continued.cfg.encoder_embed_dim == official["cfg"]["encoder_embed_dim"]
    weights = backbone_to_official(continued.state_dict())
    assert weights.keys() == official["model"].keys()
    assert not torch.equal(weights["encoder.layers.0.fc1.weight"], official["model"]["encoder.layers.0.fc1.weight"])


def test_finished_tokenizers_and_probe_stages_run_again_when_what_they_covered_changed(tmp_path, demo_data):
    """--iterations 2 -> 3 adds iter3's labels to the tokenizers stage and iter3 to the probe: both run again."""
    from beats_fairseq.pipeline.runner import Runner
    from beats_fairseq.pipeline.steps import covered

    lines = []
    two = Runner(PipelineConfig(data=str(demo_data), out=str(tmp_path / "run")), say=lines.append)
    for k, name in enumerate(["tokenizers", "probe"]):
        stage = next(s for s in two.stages if s.name == name)
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text("{}")
        two.state.update(name, status="done", covered=covered(stage, two.config))
        assert not two.needs_running(k, stage) and lines.pop().endswith("skipped")
    assert covered(next(s for s in two.stages if s.name == "tokenizers"), two.config)["labels"] == {
        "iter1": "iter1", "iter2": "tokenizer_iter1"}  # the random projection of iter1's recipe, then a tokenizer

    three = Runner(PipelineConfig(data=str(demo_data), out=str(tmp_path / "run"), iterations=3), say=lines.append)
    for k, name in enumerate(["tokenizers", "probe"]):
        assert three.needs_running(k, next(s for s in three.stages if s.name == name))
    assert lines == ["[stage 0/8] tokenizers: iterations or labelled split changed since it last ran; running it again",
                     "[stage 1/8] probe: encoders or probe options changed since it last ran; running it again"]
    three.state.update("probe", status="done", covered=None, probed={"encoders": []})  # a state file of old
    assert three.needs_running(1, next(s for s in three.stages if s.name == "probe"))


def test_eval_probe_runs_every_probe_when_valid_is_labelled_and_apart(tmp_path, demo_data):
    from beats_fairseq.pipeline.diagnostics import probe_block

    def probes(config):
        return config.probe_names()

    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "r"))
    assert probes(config) == ("linear", "weighted-layers", "mlp")  # demo data: valid.tsv and valid.lbl
    assert probes(PipelineConfig(data=str(demo_data), out=str(tmp_path), eval_train_split="valid")) == ("linear",)
    assert probes(PipelineConfig(data=str(demo_data), out=str(tmp_path), label_ext="none")) == ("linear",)  # no valid.none
    rows = [{"encoder": "random", "probe": "linear", "value": 0.2}, {"encoder": "random", "probe": "mlp", "value": 0.3},
            {"encoder": "iter1", "value": 0.5}]  # rows of runs before the probes had names are linear
    assert probe_block(rows) == {"linear": {"random": 0.2, "iter1": 0.5}, "mlp": {"random": 0.3}}
