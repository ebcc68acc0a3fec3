"""Evaluation: the labelled splits, the multi-label rule and the metric (beats_fairseq.evaluation); the
pipeline's --scale small and --eval plans, the raw-fbank baseline, the summary's evaluation block and
headline, and --eval finetune end to end on tiny data (through the library)."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from beats_fairseq.evaluation import LabelledSplit, is_multilabel, read_split, read_splits, score
from beats_fairseq.modules.fbank import compute_fbank
from beats_fairseq.pipeline import PipelineConfig, run_pipeline
from beats_fairseq.pipeline.summary import evaluation_block, evaluation_table, headline
from beats_fairseq.probe import fbank_baseline, fbank_statistics
from beats_fairseq.recipes import recipe_dir

from conftest import assert_picture
from test_pipeline import given_finished_iter1_and_tokenizer, run_pipeline as run_command


def stage_names(out):
    return [line.split("]")[1].split(":")[0].strip() for line in out.splitlines() if line.startswith("[stage")]


def test_small_scale_with_finetune_evaluation_plans_every_stage(tmp_path, demo_data, capsys):
    run = tmp_path / "run"
    code, out = run_command(capsys, "--data", demo_data, "--out", run, "--scale", "small", "--iterations", "3",
                             "--supervised-teacher", "--eval", "finetune", "--eval-seeds", "2", "--dry-run")
    assert code == 0, out
    evals = [f"eval_{e}_seed{s}" for e in ("random", "iter1", "iter2", "iter3") for s in (1, 2)]
    assert stage_names(out) == ["iter1", "tokenizer_iter1", "iter2", "finetune_iter2", "tokenizer_iter2", "iter3",
                                "tokenizers", "fbank"] + evals
    cfg = {name: OmegaConf.load(run / name / "stage.yaml") for name in
           ["iter1", "tokenizer_iter1", "iter3", "finetune_iter2", "tokenizer_iter2"] + evals}
    small = {d: OmegaConf.load(recipe_dir(d) / "small.yaml") for d in ("beats_iter1", "beats_tokenizer",
                                                                                "beats_finetune")}
    # the small recipes, not the tiny update counts
    assert cfg["iter1"].optimization.max_update == small["beats_iter1"].optimization.max_update
    assert cfg["iter1"].model.encoder_embed_dim == small["beats_iter1"].model.encoder_embed_dim
    assert cfg["tokenizer_iter1"].model.codebook_size == small["beats_tokenizer"].model.codebook_size
    # the small recipe distils the supervised teacher's features, not its logits (docs/small_scale.md)
    assert cfg["tokenizer_iter2"].model.teacher_target == "features"
    assert cfg["tokenizer_iter2"].model.teacher_path == str(run / "finetune_iter2" / "checkpoints" / "checkpoint_last.pt")
    for name in evals:
        c = cfg[name]
        encoder, seed = name.split("_")[1], int(name[-1])
        assert c.common.seed == seed and c.task.data == str(demo_data.resolve())
        assert c.optimization.max_update == small["beats_finetune"].optimization.max_update
        assert c.checkpoint.save_dir == str(run / name / "checkpoints")
        if encoder == "random":
            assert c.model.pretrained_path is None
            for key in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "embed_dim"):
                assert c.model[key] == cfg["iter1"].model[key]  # the architecture of the pre-trained encoders
        else:
            assert c.model.pretrained_path == str(run / encoder / "checkpoints" / "checkpoint_last.pt")

    # --eval probe (default): the fbank baseline and one probe stage
    code, out = run_command(capsys, "--data", demo_data, "--out", tmp_path / "p", "--scale", "small", "--dry-run")
    assert code == 0 and stage_names(out) == ["iter1", "tokenizer_iter1", "iter2", "tokenizers", "fbank",
                                                   "probe"]
    code, out = run_command(capsys, "--data", demo_data, "--out", tmp_path / "p", "--eval", "finetune",
                             "--eval-seeds", "0", "--dry-run")
    assert code == 1 and "--eval-seeds must be >= 1" in out


def test_fbank_statistics_ignore_padding_and_baseline_beats_chance(demo_data):
    stats = fbank_statistics(str(demo_data / "valid.tsv"), batch_size=5)
    assert stats.shape == (36, 256) and np.isfinite(stats).all()
    import soundfile as sf

    from beats_fairseq.data.manifest import read_manifest

    manifest = read_manifest(str(demo_data / "valid.tsv"))
    wav, _ = sf.read(manifest.abspath(3), dtype="float32")
    fbank = compute_fbank(torch.from_numpy(wav)[None])[0]
    assert np.allclose(stats[3, :128], fbank.mean(0).numpy(), atol=1e-5)
    assert np.allclose(stats[3, 128:], fbank.std(0, unbiased=False).numpy(), atol=1e-5)
    metric, value = fbank_baseline(*read_splits(str(demo_data), ["train", "test"]))
    assert metric == "accuracy" and value > 0.5  # 6 classes: chance 0.17
    metric, value = fbank_baseline(*read_splits(str(demo_data), ["train", "test"], "mlbl"))
    assert metric == "mAP" and value > 0.5  # .mlbl: multi-label, whatever the number of ids per clip


def test_evaluation_block_and_table():
    block = evaluation_block("accuracy", "test", {"random": [0.1, 0.3], "fbank": [0.25], "iter1": [0.4, 0.5]})
    assert block["rows"]["random"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.1414, abs=1e-4),
                                       "runs": [0.1, 0.3]}
    assert block["rows"]["fbank"]["std"] == 0.0 and list(block["rows"]) == ["random", "fbank", "iter1"]
    table = evaluation_table(block).markdown()
    assert "| iter1 | 0.450 ± 0.071 | +0.200 | 0.400, 0.500 |" in table
    assert "<td>iter1</td><td>0.450 ± 0.071</td><td>+0.200</td>" in evaluation_table(block).html()
    assert headline(block) == ("Best: iter1, accuracy 0.450 ± 0.071 on test (2 runs); +0.200 over fbank, "
                               "+0.250 over random.")
    close = evaluation_block("mAP", "eval", {"fbank": [0.3], "iter1": [0.40, 0.50], "iter2": [0.42, 0.44]})
    assert headline(close) == ("Best: iter1, mAP 0.450 ± 0.071 on eval (2 runs); +0.020 over iter2 (within the "
                               "spread over runs), +0.150 over fbank.")
    baseline = evaluation_block("accuracy", "test", {"random": [0.62, 0.70, 0.72], "fbank": [0.683],
                                                     "iter1": [0.47, 0.33, 0.47], "iter2": [0.60, 0.52, 0.53]})
    assert headline(baseline) == ("Best: fbank, accuracy 0.683 on test; +0.003 over random (within the spread over "
                                  "runs). Best pre-trained encoder: iter2, 0.550 ± 0.044 (-0.133 against fbank).")


def write_split(folder, name, labels, ext):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.tsv").write_text("/audio\n" + "".join(f"{name}_{i}.wav\t16000\n" for i in range(len(labels))))
    (folder / f"{name}.{ext}").write_text("".join(",".join(map(str, ids)) + "\n" for ids in labels))


def test_one_multilabel_rule_and_one_metric_for_every_split(tmp_path):
    assert not is_multilabel("lbl", [[0], [2]]) and is_multilabel("mlbl", [[0]]) and is_multilabel("lbl", [[0, 1]])
    write_split(tmp_path, "train", [[0], [1], [2]], "lbl")
    write_split(tmp_path, "test", [[1], [0, 3]], "lbl")
    train, test = read_splits(str(tmp_path), ["train", "test"])
    assert train.multilabel and test.multilabel and train.num_classes == test.num_classes == 4  # decided together
    assert test.metric == "mAP" and test.targets().tolist() == [[0, 1, 0, 0], [1, 0, 0, 1]]
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},c{i}\n" for i in range(6)))
    only = read_split(str(tmp_path / "train.tsv"), str(tmp_path / "train.lbl"))
    assert not only.multilabel and only.num_classes == 3 and only.metric == "accuracy"
    assert read_splits(str(tmp_path), ["train"])[0].num_classes == 6  # the class map's count
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7]])  # the second clip is wrong
    assert score(scores, only) == ("accuracy", pytest.approx(2 / 3))
    assert score(scores, only, "mAP").metric == "mAP" and score(scores[[0, 2]], only.subset([0, 2])).value == 1.0
    with pytest.raises(ValueError, match="several class ids"):
        LabelledSplit("t", "t.tsv", [[0, 1]], 2, True).classes()


@pytest.mark.slow
def test_finetune_evaluation_runs_end_to_end_and_resumes(tmp_path, demo_data):
    """Through the library: iter1 and tokenizer_iter1 are given: iter2 (4 updates), the fbank baseline and one
    fine-tuning run (6 updates, 1 seed) each of random, iter1 and iter2, two at a time (``jobs=2``), scored on
    test from checkpoint_best.pt."""
    run = tmp_path / "run"
    given_finished_iter1_and_tokenizer(run)
    config = PipelineConfig(data=str(demo_data), out=str(run), eval="finetune", eval_seeds=1, jobs=2, overrides=[
        "pretrain:optimization.max_update=4", "finetune:optimization.max_update=6",
        "finetune:optimizer.groups.default.lr_scheduler.warmup_updates=1"])
    lines = []
    summary = run_pipeline(config, say=lines.append)
    out = "\n".join(lines)
    names = ["eval_random_seed1", "eval_iter1_seed1", "eval_iter2_seed1"]
    for name in names:
        score = json.loads((run / name / "score.json").read_text())
        assert score["metric"] == "accuracy" and 0 <= score["value"] <= 1 and score["split"] == "test"
        assert score["checkpoint"] == f"{name}/checkpoints/checkpoint_best.pt"
    assert summary == json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]][-4:] == ["fbank"] + names
    evaluation = summary["evaluation"]
    assert evaluation["metric"] == "accuracy" and evaluation["split"] == "test"
    assert list(evaluation["rows"]) == ["random", "fbank", "iter1", "iter2"]
    assert evaluation["rows"]["fbank"]["mean"] > 0.5  # the raw-fbank baseline is well above chance (1/6)
    for row in evaluation["rows"].values():
        assert len(row["runs"]) == 1 and row["std"] == 0.0 and row["mean"] == row["runs"][0]
    assert "| fbank |" in out and "| iter2 |" in out and "fine-tuned (1 seeds)" in out and "Best: " in out
    assert "running 3 evaluation fine-tunings, 2 at a time" in out
    started = {name: out.index(f"] {name} fine-tune") for name in names}
    assert started["eval_iter1_seed1"] < out.index("] eval_random_seed1 done")  # the second began before the first ended
    assert summary["command"].startswith("PipelineConfig(data=")
    assert_picture(run / "report.png", min_width=1000, min_height=700)

    # a rerun trains nothing and reports the same rows
    lines.clear()
    assert run_pipeline(config, say=lines.append)["evaluation"] == evaluation
    assert "\n".join(lines).count("skipped") == 8  # iter1, tokenizer_iter1, iter2, tokenizers, fbank, 3 fine-tunings
