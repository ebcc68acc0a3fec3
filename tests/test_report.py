"""Installed recipes (beats-config-dir), the recipes' TensorBoard key, the pipeline's report.png / report.html."""

import base64
import json
from pathlib import Path

from omegaconf import OmegaConf

from beats_fairseq.cli import config_dir
from beats_fairseq.cli.pipeline_plot import evaluation_bars, markdown_to_html, stage_curves, write_report
from beats_fairseq.cli.pipeline_stages import Stage
from beats_fairseq.recipes import recipe_dir, recipe_names
from conftest import REPO, assert_picture

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


def json_line(kind, metrics):
    prefix = "" if kind == "train_inner" else f"{kind}_"
    body = json.dumps({f"{prefix}{k}": str(v) for k, v in metrics.items()})
    return f"[2026-01-01 00:00:00,000][{kind}][INFO] - {body}\n"


def write_log(path: Path, score: str, updates=(10, 20, 30, 40), code=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in updates:
        metrics = {"loss": 5.0 - n / 20, score: n / 50, "num_updates": n}
        if code:
            metrics.update(code_usage=0.5 + n / 100, code_perplexity=10 + n)
        lines.append(json_line("train_inner", metrics))
        if n % 20 == 0:
            lines.append(json_line("valid", {"loss": 5.2 - n / 20, score: n / 60, "num_updates": n}))
    path.write_text("".join(lines))


def test_curves_of_a_resumed_log_keep_one_value_per_update(tmp_path):
    log = tmp_path / "train.log"
    write_log(log, "accuracy", updates=(10, 20, 30))
    with open(log, "a") as f:  # resumed from the checkpoint of update 20
        f.write(json_line("train_inner", {"loss": 1.0, "accuracy": 0.9, "num_updates": 30}))
    curves = stage_curves(log)
    assert curves["train"]["loss"] == ([10.0, 20.0, 30.0], [4.5, 4.0, 1.0])
    assert curves["valid"]["accuracy"][0] == [20.0]


def test_evaluation_bars_read_the_evaluation_block_else_the_probe():
    probe = [{"encoder": "random", "metric": "accuracy", "value": 0.3}, {"encoder": "iter1", "metric": "accuracy",
                                                                           "value": 0.5}]
    assert evaluation_bars({"probe": probe}) == ("linear probe accuracy", ["random", "iter1"], [0.3, 0.5], None)
    block = {"random": {"mean": 0.3, "std": 0.02, "runs": [0.28, 0.32]}, "fbank": {"mean": 0.4, "std": 0.0, "runs": 1},
             "iter1": {"mean": 0.5, "std": 0.01, "runs": 3}}
    metric, names, values, stds = evaluation_bars({"probe": probe, "evaluation": block})
    assert metric == "linear probe accuracy, mean ± std over runs"
    assert names == ["random (n=2)", "fbank", "iter1 (n=3)"] and values == [0.3, 0.4, 0.5] and stds[0] == 0.02
    assert evaluation_bars({"probe": []}) is None


def test_report_png_and_html_show_every_stage_and_the_evaluation(tmp_path):
    run = tmp_path / "run"
    stages = [Stage("iter1", "pretrain", "iter1 pre-training", run),
              Stage("tokenizer_iter1", "tokenizer", "tokenizer distilled from iter1", run),
              Stage("iter2", "pretrain", "iter2 pre-training", run), Stage("probe", "probe", "linear probe", run)]
    write_log(stages[0].log_path, "accuracy")
    write_log(stages[1].log_path, "cosine")
    # iter2 has no log yet (e.g. it failed): its row says so instead of failing the report
    summary = {"probe": [{"encoder": "random", "metric": "accuracy", "value": 0.31},
                         {"encoder": "iter1", "metric": "accuracy", "value": 0.52}]}
    md = "# BEATs pipeline: run\n\n| stage | what |\n|---|---|\n| iter1 | `iter1` pre-training |\n"
    png, page = write_report(run, stages, summary, md)
    assert_picture(png, min_width=1000, min_height=900)
    text = page.read_text()
    assert "<td>iter1</td><td><code>iter1</code> pre-training</td>" in text and "<h1>BEATs pipeline: run</h1>" in text
    embedded = text.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == png.read_bytes()


def test_markdown_tables_become_html_tables():
    out = markdown_to_html("intro <b>\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| c |\n|---|\n| 3 |")
    assert out.count("<table>") == 2 and "<th>a</th><th>b</th>" in out and "<td>1</td><td>2</td>" in out
    assert "<p>intro &lt;b&gt;</p>" in out


def test_finetune_row_draws_its_accuracy(tmp_path):
    stage = Stage("finetune_iter2", "finetune", "fine-tune iter2", tmp_path)
    write_log(stage.log_path, "accuracy", code=False)
    png, _ = write_report(tmp_path, [stage], {}, "# run\n")
    assert_picture(png, min_width=1000, min_height=250)
