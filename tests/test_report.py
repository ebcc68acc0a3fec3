"""Installed recipes (beats-config-dir), the recipes' TensorBoard key, the pipeline's report.png / report.html."""

import base64
import json

import numpy as np
from omegaconf import OmegaConf

from beats_fairseq.cli import config_dir
from beats_fairseq.pipeline import PipelineConfig, plan
from beats_fairseq.pipeline.events import last_metrics, read_curves
from beats_fairseq.pipeline.figure import evaluation_bars, panel_runs
from beats_fairseq.pipeline.report import write_summary
from beats_fairseq.pipeline.state import State
from beats_fairseq.recipes import recipe_dir, recipe_names
from beats_fairseq.tables import Table
from conftest import REPO, assert_picture
from test_pipeline import write_events

SHIPPED = (".yaml", ".py", ".sh")  # setup.py's package_data patterns for examples/*/


def test_recipes_are_the_checkout_examples_and_all_shipped(capsys):
    assert recipe_dir("beats_iter1") == REPO / "examples" / "beats_iter1"
    assert recipe_names() == ["beats_continue", "beats_finetune", "beats_iter1", "beats_iter2", "beats_iter3", "beats_tokenizer"]
    assert config_dir.main(["beats_tokenizer"]) == 0
    assert capsys.readouterr().out.strip() == str(REPO / "examples" / "beats_tokenizer")
    assert config_dir.main(["beats_iter9"]) == 1
    err = capsys.readouterr().err
    assert "no recipe config dir 'beats_iter9'" in err and "valid names: beats_continue, beats_finetune, beats_iter1" in err
    assert config_dir.main([]) == 0 and "beats_iter2\t" in capsys.readouterr().out
    # every file of examples/ is package data of the wheel (setup.py installs examples/*/<these suffixes>)
    files = [p for p in (REPO / "examples").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files and all(p.suffix in SHIPPED and len(p.relative_to(REPO / "examples").parts) == 2 for p in files)


def test_every_recipe_documents_the_tensorboard_key():
    for path in sorted((REPO / "examples").glob("*/*.yaml")):
        assert "tensorboard_logdir" in OmegaConf.load(path).common, path
        assert "tensorboard --logdir" in path.read_text(), path


METRICS = {"pretrain": "accuracy", "tokenizer": "cosine", "finetune": "accuracy"}


def fake_run(run, demo_data, **options):
    """The stages of a finished run with TensorBoard curves and state.json entries like a real one's (no training)."""
    config = PipelineConfig(data=str(demo_data), out=str(run), **options)
    stages = plan(config)
    state = State(run / "state.json")
    rng = np.random.RandomState(0)
    for k, stage in enumerate(stages):
        entry = {"status": "done", "seconds": 10.0 + k}
        if stage.training:
            score, end = METRICS[stage.kind], 60 if stage.kind == "finetune" else 100
            gain = 0.3 + 0.1 * k / len(stages) + 0.05 * rng.rand()
            inner = [(n, {"loss": 5 - 3 * gain * n / end, score: gain * n / end, "code_usage": 0.6 + 0.3 * n / end})
                     for n in range(10, end + 1, 10)]
            valid = [(n, {"loss": 5.2 - 3 * gain * n / end, score: 0.9 * gain * n / end}) for n in (end // 2, end)]
            write_events(stage.tensorboard, "train_inner", inner if stage.kind != "finetune" else
                         [(n, {"loss": m["loss"]}) for n, m in inner])
            write_events(stage.tensorboard, "valid", valid)
            entry["metrics"] = last_metrics(read_curves(stage.tensorboard))
            if stage.score_split:
                entry["metrics"]["score"] = {"encoder": stage.encoder, "metric": "accuracy", "value": gain}
        elif stage.kind == "fbank":
            entry["metrics"] = {"fbank": {"metric": "accuracy", "value": 0.33}}
        elif stage.kind == "probe":
            entry["metrics"] = {"probe": [
                {"encoder": name, "checkpoint": f"{name}.pt", "metric": "accuracy", "value": value, "train_clips": 120,
                 "eval_clips": 36, "dim": 128, "seconds": 1.0}
                for name, value in (("random", 0.3), ("iter1", 0.5), ("iter2", 0.45))]}
            entry["covered"] = {}
        state.data["stages"][stage.name] = entry
    return config, stages, state


def test_report_of_a_three_iteration_finetune_run_is_short_and_answers_first(tmp_path, demo_data):
    run = tmp_path / "run"
    config, stages, state = fake_run(run, demo_data, iterations=3, supervised_teacher=True, eval="finetune")
    lines = []
    summary = write_summary(config, stages, state, "beats-pipeline ...", say=lines.append)
    assert set(summary) == {"command", "stages", "probe", "evaluation"}
    assert list(summary["evaluation"]["rows"]) == ["random", "fbank", "iter1", "iter2", "iter3"]
    assert all(len(r["runs"]) == 3 for name, r in summary["evaluation"]["rows"].items() if name != "fbank")
    assert_picture(run / "report.png", min_width=1200, min_height=900)
    from PIL import Image

    width, height = Image.open(run / "report.png").size
    assert height <= 2000, height  # at most about two screens
    # one panel per kind of training: iterations together, tokenizers together, fine-tunings grouped by encoder
    panels = panel_runs(stages)
    assert list(panels) == ["pretrain", "tokenizer", "finetune"]
    assert [r.label for r in panels["pretrain"]] == ["iter1", "iter2", "iter3"]
    assert [r.label for r in panels["tokenizer"]] == ["tokenizer_iter1 (from iter1)", "tokenizer_iter2 (from finetune_iter2)"]
    assert [r.label for r in panels["finetune"]] == ["finetune_iter2 (teacher)", "random", "iter1", "iter2", "iter3"]
    assert [len(r.curves) for r in panels["finetune"]] == [1, 3, 3, 3, 3]
    assert panels["tokenizer"][1].colour == panels["pretrain"][1].colour  # distilled from (a fine-tuned) iter2
    page = (run / "report.html").read_text()
    assert page.index("Best: iter3") < page.index("<th>accuracy on test (mean ± std)</th>") < page.index("<img") \
        < page.index("<td>tokenizer_iter1</td>")
    embedded = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == (run / "report.png").read_bytes()
    md = (run / "summary.md").read_text()
    assert md.index("Best: iter3") < md.index("| iter3 |") < md.index("| stage |") and "\n".join(lines).endswith(")")


def test_probes_beside_fine_tuning_are_reported_apart_from_it_and_combine_over_loops(tmp_path, demo_data):
    from beats_fairseq.pipeline.aggregate import combine

    run = tmp_path / "run"
    config, stages, state = fake_run(run, demo_data, eval="finetune", eval_seeds=2, probes=["linear"],
                                     label_budgets=["2", "all"])
    names = [s.name for s in stages]
    assert names[-3:] == ["probe_2perclass_seed1", "probe_2perclass_seed2", "probe"]  # after all the fine-tunings
    assert [s.title for s in stages[-3:]] == ["linear probes on test, 2 per class (seed 1)",
                                              "linear probes on test, 2 per class (seed 2)", "linear probes on test"]
    summary = write_summary(config, stages, state, "cmd", say=lambda text: None)
    block = summary["evaluation"]
    assert block["how"].startswith("fine-tuned") and block["rows"]["iter1"]["runs"] != [0.5]  # fine-tuning scores
    assert all(len(r["runs"]) == 2 for name, r in block["rows"].items() if name != "fbank")
    assert block["budgets"]["2"]["rows"]["fbank"]["runs"] == [0.33, 0.33]  # one per subset
    for budget, subsets in (("2", 2), ("all", 1)):
        probes = block["budgets"][budget]["probes"]
        assert list(probes) == ["linear"] and list(probes["linear"]) == ["random", "iter1", "iter2"]
        assert probes["linear"]["iter1"]["runs"] == [0.5] * subsets
    md = (run / "summary.md").read_text()
    assert "Probes on frozen features, beside fine-tuning (bands pooling, 2 clips per class):" in md
    assert "| iter1 | 0.500 ± 0.000 |" in md
    both = combine([block, block])
    assert both["budgets"]["2"]["probes"]["linear"]["iter2"]["runs"] == [0.45] * 4
    # without --probes, --eval finetune runs no probe
    assert "probe" not in [s.name for s in plan(PipelineConfig(data=str(demo_data), out=str(run), eval="finetune"))]


def test_report_without_evaluation_or_fine_tuning_has_no_empty_panel(tmp_path, demo_data):
    run = tmp_path / "run"
    config, stages, state = fake_run(run, demo_data, evaluate=False)
    (run / "tokenizer_iter1" / "tensorboard").rename(run / "gone")  # e.g. a run that failed before logging
    summary = write_summary(config, stages, state, "cmd", say=lambda text: None)
    assert "evaluation" not in summary and evaluation_bars(summary) is None
    assert list(panel_runs(stages)) == ["pretrain"]
    assert_picture(run / "report.png", min_width=1200, min_height=250)
    assert "Best:" not in (run / "report.html").read_text()


def test_evaluation_bars_read_the_evaluation_block():
    block = {"metric": "accuracy", "split": "test", "rows": {
        "random": {"mean": 0.3, "std": 0.02, "runs": [0.28, 0.32]}, "fbank": {"mean": 0.4, "std": 0.0, "runs": [0.4]}}}
    assert evaluation_bars({"evaluation": block}) == ("accuracy on test, mean ± std over runs", ["random", "fbank"],
                                                      [0.3, 0.4], [0.02, 0.0])
    assert evaluation_bars({"probe": []}) is None


def test_tables_are_markdown_and_html_from_one_table():
    table = Table(["name", "value"])
    table.add("a|b", "<1>")
    assert table.markdown() == "| name | value |\n|---|---|\n| a\\|b | <1> |"
    assert table.html() == "<table><tr><th>name</th><th>value</th></tr><tr><td>a|b</td><td>&lt;1&gt;</td></tr></table>"
