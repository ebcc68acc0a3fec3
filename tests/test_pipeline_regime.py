"""beats-pipeline on unlabelled pools, label budgets and loop seeds: the plan, the budget subsets,
the evaluation over budgets and loops (paired differences), and the loop end to end."""

import dataclasses
import json
import shutil

import pytest
from omegaconf import OmegaConf

from beats_fairseq.pipeline import PipelineConfig, PipelineError, plan, prepare
from beats_fairseq.pipeline.aggregate import combine, paired, t_interval
from beats_fairseq.pipeline.budgets import stratified_subset
from conftest import assert_picture


@pytest.fixture
def pool_data(demo_data, tmp_path):
    """The demo corpus with an unlabelled ``pool.tsv`` (its train and test clips; manifests have absolute roots)."""
    data = tmp_path / "data"
    data.mkdir()
    for path in demo_data.iterdir():
        if path.is_file():
            shutil.copy(path, data / path.name)
    train, test = (data / "train.tsv").read_text().splitlines(), (data / "test.tsv").read_text().splitlines()
    (data / "pool.tsv").write_text("\n".join(train + test[1:]) + "\n")
    return data


def test_pool_budgets_and_loop_seeds_plan_into_seed_folders(pool_data, tmp_path):
    run = tmp_path / "run"
    config = PipelineConfig(data=str(pool_data), out=str(run), iterations=3, supervised_teacher=True,
                            eval="finetune", eval_seeds=2, pretrain_split="pool", label_budgets=["all", "2"],
                            loop_seeds=2)
    stages = prepare(config)
    by = {(s.dir.relative_to(run).parts[0], s.name): s for s in stages}
    assert len(by) == len(stages) == 2 * (6 + 1 + 2 * 2 + 1 + 4 * 2 * 2)  # per loop: training, tokenizers, a subset
    # and its fbank baseline per evaluation seed, the fbank baseline on all, fine-tunings
    for k in (1, 2):
        loop = f"seed{k}"
        for name in ("iter1", "tokenizer_iter1", "iter2", "tokenizer_iter2", "iter3"):
            cfg = by[loop, name].config
            assert (cfg.dataset.train_subset, cfg.dataset.valid_subset, cfg.common.seed) == ("pool", "valid", k)
        teacher = by[loop, "finetune_iter2"].config
        assert (teacher.dataset.train_subset, teacher.common.seed) == ("train", k)  # the labelled split
        assert not by[loop, "fbank"].depends
        seeds = (2 * k - 1, 2 * k)  # the fine-tuning seeds of loop k: one subset each, shared by every encoder
        for seed in seeds:
            subset = by[loop, f"subset_2perclass_seed{seed}"]
            assert subset.output == run / loop / "budgets" / f"train_2_seed{seed}.tsv" and subset.settings["seed"] == seed
            assert by[loop, f"fbank_2perclass_seed{seed}"].depends == [subset]
        for encoder in ("random", "iter1", "iter2", "iter3"):
            for seed in seeds:
                full, few = by[loop, f"eval_{encoder}_seed{seed}"], by[loop, f"eval_{encoder}_2perclass_seed{seed}"]
                subset = run / loop / "budgets" / f"train_2_seed{seed}"
                assert full.config.dataset.train_subset == "train" and full.config.common.seed == seed
                assert few.config.dataset.train_subset == str(subset) and few.config.common.seed == seed
                assert [d.name for d in few.depends if d.kind == "subset"] == [f"subset_2perclass_seed{seed}"]
                assert few.config.dataset.valid_subset == "valid" and few.budget == "2" and full.budget == "all"
                assert (few.role, full.role) == ("budget_finetune", "finetune")
    iter2 = by["seed1", "eval_iter2_2perclass_seed1"]
    assert iter2.config.model.pretrained_path == str(run / "seed1" / "iter2" / "checkpoints" / "checkpoint_last.pt")

    # one loop: today's layout and the recipes' seeds; the pool still reaches only pre-training and tokenizers
    one = {s.name: s for s in prepare(dataclasses.replace(config, loop_seeds=1, out=str(tmp_path / "one")))}
    assert one["iter1"].dir == tmp_path / "one" / "iter1" and "common.seed" not in one["iter1"].settings
    assert one["iter1"].config.dataset.train_subset == "pool" and one["eval_iter1_seed2"].config.common.seed == 2

    # --scale small: a budget fine-tunes with the few-label recipe, all labels and the teacher with small.yaml
    small = {s.name: s for s in prepare(dataclasses.replace(config, scale="small", loop_seeds=1,
                                                            out=str(tmp_path / "small")))}
    heads = {name: (small[name].config.model.head_pooling, small[name].config.model.head_init,
                    small[name].config.model.freeze_encoder_updates)
             for name in ("eval_iter1_2perclass_seed1", "eval_iter1_seed1", "finetune_iter2")}
    assert heads == {"eval_iter1_2perclass_seed1": ("band_stats", "probe", 150), "eval_iter1_seed1": ("mean", "random", 0),
                     "finetune_iter2": ("mean", "random", 0)}
    chosen = prepare(dataclasses.replace(config, scale="small", loop_seeds=1, out=str(tmp_path / "chosen"),
                                         recipes={"budget_finetune": "small"}))
    assert {s.config.model.head_pooling for s in chosen if s.kind == "finetune"} == {"mean"}
    # budget_finetune: reaches the fine-tunings on a label budget only; finetune: every fine-tuning
    narrowed = {s.name: s for s in prepare(dataclasses.replace(
        config, scale="small", loop_seeds=1, out=str(tmp_path / "narrowed"),
        overrides=["budget_finetune:model.head_init=random", "finetune:optimization.max_update=120"]))}
    assert narrowed["eval_iter1_2perclass_seed1"].config.model.head_init == "random"
    assert all(narrowed[name].config.optimization.max_update == 120 for name in heads)
    assert [narrowed[name].config.model.freeze_encoder_updates for name in heads] == [150, 0, 0]
    with pytest.raises(PipelineError, match="their prefix no stage of this run"):  # no budget: no budget stage
        prepare(dataclasses.replace(config, scale="small", loop_seeds=1, label_budgets=["all"],
                                    out=str(tmp_path / "none"), overrides=["budget_finetune:model.head_init=random"]))

    with pytest.raises(PipelineError, match="plan each loop"):
        plan(config)
    for bad, message in ((dict(pretrain_split="nope"), r"--pretrain-split nope: .*nope.tsv does not exist"),
                         (dict(label_budgets=["0"]), "'0' is neither"), (dict(label_budgets=["ten"]), "'ten'"),
                         (dict(label_budgets=[]), "is empty"), (dict(loop_seeds=0), "--loop-seeds must be >= 1"),
                         (dict(eval="probe", probes=["linear", "svm"]), "'svm' is not a probe"),
                         (dict(eval="probe", probes=[]), "--probes is empty"),
                         (dict(eval="probe", probes=["mlp"], eval_train_split="valid"), "mlp stop early on")):
        with pytest.raises(PipelineError, match=message):
            dataclasses.replace(config, **bad).check()
    probing = dataclasses.replace(config, eval="probe")
    assert probing.probe_names() == ("linear", "weighted-layers", "mlp")  # valid is labelled
    assert dataclasses.replace(probing, probes=["mlp", "linear"]).probe_names() == ("linear", "mlp")
    assert dataclasses.replace(probing, eval_train_split="valid").probe_names() == ("linear",)
    with pytest.raises(PipelineError, match=r"dataset.train_subset .*--pretrain-split"):
        prepare(dataclasses.replace(config, loop_seeds=1, overrides=["pretrain:dataset.train_subset=pool"]))


def test_budget_subsets_are_stratified_seeded_nested_and_used_by_the_fbank_baseline(pool_data, tmp_path):
    labels = [[c % 4] for c in range(40)] + [[4, 1]]  # 10 clips of classes 0-3, one of class 4 (multi-label)
    two = stratified_subset(labels, 2, seed=1)
    assert sorted(labels[p][0] for p in two) == [0, 0, 1, 1, 2, 2, 3, 3, 4] and two == sorted(two)
    assert stratified_subset(labels, 2, seed=1) == two != stratified_subset(labels, 2, seed=2)
    assert set(two) <= set(stratified_subset(labels, 5, seed=1))  # nested budgets
    assert len(stratified_subset(labels, 100, seed=1)) == 41

    from beats_fairseq.data.manifest import read_manifest
    from beats_fairseq.pipeline.compose import Composer
    from beats_fairseq.pipeline.steps import Context, run_step

    config = PipelineConfig(data=str(pool_data), out=str(tmp_path / "run"), label_budgets=["3"], eval_seeds=2)
    stages = {s.name: s for s in plan(config)}
    assert [s for s in stages if not s.startswith(("iter", "tokenizer"))] == [
        "subset_3perclass_seed1", "fbank_3perclass_seed1", "subset_3perclass_seed2", "fbank_3perclass_seed2",
        "probe_3perclass_seed1", "probe_3perclass_seed2"]  # --eval probe: one probe per subset
    ctx = Context(config, Composer(config), "cpu", lambda text: None)
    result = run_step(stages["subset_3perclass_seed1"], ctx)["metrics"]["subset"]
    written = tmp_path / "run" / "budgets" / "train_3_seed1.tsv"
    assert result["clips"] == 18 and result["classes"] == 6 and written.is_file()
    manifest, full = read_manifest(written), read_manifest(pool_data / "train.tsv")
    lines = (pool_data / "train.lbl").read_text().splitlines()
    chosen = written.with_suffix(".lbl").read_text().splitlines()
    assert manifest.root == full.root and sorted(chosen) == sorted(str(c) for c in range(6) for _ in range(3))
    positions = [full.paths.index(p) for p in manifest.paths]
    assert [lines[p] for p in positions] == chosen  # the labels of the chosen clips
    first = written.read_bytes()
    run_step(stages["subset_3perclass_seed1"], ctx)
    assert written.read_bytes() == first  # deterministic given the seed
    run_step(stages["subset_3perclass_seed2"], ctx)
    assert written.with_name("train_3_seed2.tsv").read_bytes() != first  # another draw for the other seed
    fbank = run_step(stages["fbank_3perclass_seed1"], ctx)["metrics"]["fbank"]
    assert fbank["train_clips"] == 18 and fbank["train_split"] == "train_3_seed1" and 0 <= fbank["value"] <= 1


def test_paired_differences_and_their_t_interval():
    assert t_interval([0.5]) == {"mean": 0.5, "low": None, "high": None}
    interval = t_interval([0.1, 0.2, 0.3])
    half = 4.302653 * 0.1 / 3 ** 0.5  # t(0.975, 2 degrees of freedom) x sd / sqrt(n)
    assert interval["mean"] == pytest.approx(0.2) and interval["low"] == pytest.approx(0.2 - half, abs=1e-5)
    assert interval["high"] == pytest.approx(0.2 + half, abs=1e-5)

    def loop(iter1, iter2, iter3=None):
        rows = {"random": {"runs": [0.1]}, "iter1": {"runs": iter1}, "iter2": {"runs": iter2}}
        if iter3:
            rows["iter3"] = {"runs": iter3}
        return {"10": {"rows": rows}}

    diffs = paired([loop([0.4, 0.6], [0.6, 0.6], [0.5, 0.5]), loop([0.3, 0.3], [0.5, 0.3], [0.2, 0.2])])["10"]
    assert list(diffs) == ["iter1-random", "iter2-iter1", "iter3-iter1"]
    assert diffs["iter1-random"]["runs"] == pytest.approx([0.4, 0.2])
    assert diffs["iter2-iter1"]["runs"] == pytest.approx([0.1, 0.1]) and diffs["iter2-iter1"]["low"] == pytest.approx(0.1)
    assert diffs["iter3-iter1"]["runs"] == pytest.approx([0.0, -0.1]) and diffs["iter3-iter1"]["mean"] == pytest.approx(-0.05)
    assert diffs["iter3-iter1"]["low"] < -0.05 < diffs["iter3-iter1"]["high"]


def evaluated_loop(offset):
    """The evaluation block of a loop with budgets 10 and all (as summarise writes it)."""
    from beats_fairseq.pipeline.aggregate import budget_block

    return budget_block("accuracy", "test", {
        "10": {"random": [0.1, 0.12], "fbank": [0.2], "iter1": [0.3 + offset, 0.32 + offset], "iter2": [0.35, 0.37]},
        "all": {"random": [0.4, 0.42], "fbank": [0.5], "iter1": [0.6, 0.62], "iter2": [0.66 + offset, 0.64]}},
        "fine-tuned (2 seeds), best-validation checkpoint")


def test_loops_combine_into_one_evaluation_and_report(tmp_path, demo_data):
    one = evaluated_loop(0.0)
    assert list(one["budgets"]) == ["10", "all"] and one["rows"] == one["budgets"]["all"]["rows"]
    assert one["paired"]["10"]["iter2-iter1"] == {"mean": pytest.approx(0.05), "low": None, "high": None,
                                                  "runs": [pytest.approx(0.05)]}
    block = combine([one, evaluated_loop(0.02), evaluated_loop(0.04)])
    assert block["loops"] == 3 and block["how"].endswith("; 3 loop seeds")
    iter1 = block["budgets"]["10"]["rows"]["iter1"]
    assert iter1["runs"] == pytest.approx([0.3, 0.32, 0.32, 0.34, 0.34, 0.36])  # loops x fine-tuning seeds
    assert iter1["mean"] == pytest.approx(0.33) and block["rows"]["fbank"]["runs"] == [0.5, 0.5, 0.5]
    pair = block["paired"]["10"]["iter2-iter1"]
    assert pair["runs"] == pytest.approx([0.05, 0.03, 0.01]) and pair["low"] < 0.03 < pair["high"]
    assert list(block["paired"]["10"]) == ["iter1-random", "iter1-fbank", "iter2-iter1"]
    assert block["paired"]["10"]["iter1-fbank"]["runs"] == pytest.approx([0.11, 0.13, 0.15])

    from beats_fairseq.pipeline.report import write_loops_summary

    config = PipelineConfig(data=str(demo_data), out=str(tmp_path / "run"), loop_seeds=3, label_budgets=["10", "all"])
    (tmp_path / "run").mkdir()
    def tokenizers(d):  # a loop's tokenizer diagnostics
        return {"iter1": {"tokenizer": "random projection", "purity": 0.2 + d, "nmi": 0.1, "purity_chance": 0.1,
                          "nmi_chance": 0.05},
                "iter2": {"tokenizer": "tokenizer_iter1", "purity": 0.3, "nmi": 0.2, "cosine": 0.8 + d,
                          "cosine_baseline": 0.5}}

    summaries = [{"evaluation": b, "tokenizers": tokenizers(d)}
                 for b, d in ((one, 0.0), (evaluated_loop(0.02), 0.02), (evaluated_loop(0.04), 0.04))]
    summary = write_loops_summary(config, summaries, "cmd", say=lambda text: None)
    iter1 = summary["tokenizers"]["iter1"]
    assert iter1["loops"] == 3 and iter1["purity"] == pytest.approx(0.22) and iter1["purity_std"] == pytest.approx(0.02)
    assert "cosine" not in iter1 and summary["tokenizers"]["iter2"]["cosine"] == pytest.approx(0.82)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [loop["dir"] for loop in summary["loops"]] == ["seed1", "seed2", "seed3"]
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "Evaluation (fine-tuned (2 seeds), best-validation checkpoint; 3 loop seeds, 10 clips per class)" in md
    assert "| 10 clips per class | iter2-iter1 | +0.030 | [" in md and "| 1 | seed1 | seed1/summary.md |" in md
    assert md.index("Best: iter2") < md.index("| encoder |") and "| stage |" not in md
    assert "| iter1 | random projection | 0.220 ± 0.020 (0.100) | 0.100 ± 0.000 (0.050) | - | - |" in md
    assert_picture(tmp_path / "run" / "report.png", min_width=800, min_height=400)
    assert "data:image/png;base64," in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.slow
def test_pool_budgets_and_two_loop_seeds_run_end_to_end(pool_data, tmp_path, capsys):
    """Two loops of iter2 (4 updates, on the pool; iter1 and its tokenizer given), probed at 2 per class and on all."""
    from beats_fairseq.cli import pipeline
    from test_pipeline import given_finished_iter1_and_tokenizer

    run = tmp_path / "run"
    for k in (1, 2):
        given_finished_iter1_and_tokenizer(run / f"seed{k}")
    args = ["--data", pool_data, "--out", run, "--pretrain-split", "pool", "--label-budgets", "2,all",
            "--loop-seeds", "2", "--eval-seeds", "2", "--probes", "linear", "optimization.max_update=4"]
    code = pipeline.main([str(a) for a in args])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    for k in (1, 2):
        log = (run / f"seed{k}" / "iter2" / "train.log").read_text()
        assert "pool: 156 clips from" in log and "valid: 36 clips from" in log  # 120 train + 36 test clips
        assert OmegaConf.load(run / f"seed{k}" / "iter2" / "stage.yaml").common.seed == k
        loop = json.loads((run / f"seed{k}" / "summary.json").read_text())
        assert loop["evaluation"]["budgets"]["2"]["rows"]["fbank"]["runs"]
        for seed in (2 * k - 1, 2 * k):  # --eval-seeds 2: two subsets per loop
            probe2 = json.loads((run / f"seed{k}" / f"probe_2perclass_seed{seed}" / "probe.json").read_text())
            assert {r["train_clips"] for r in probe2} == {12}  # 2 clips of each of the 6 classes
            assert {r["probe"] for r in probe2} == {"linear"}  # --probes linear
    drawn = [(run / f"seed{(s + 1) // 2}" / "budgets" / f"train_2_seed{s}.tsv").read_text() for s in (1, 2, 3, 4)]
    assert len(set(drawn)) == 4  # every subset its own draw
    summary = json.loads((run / "summary.json").read_text())
    block = summary["evaluation"]
    assert block["loops"] == 2 and list(block["budgets"]) == ["2", "all"]
    assert list(block["rows"]) == ["random", "fbank", "iter1", "iter2"]
    assert all(len(row["runs"]) == 4 for row in block["budgets"]["2"]["rows"].values())  # one per subset
    assert all(len(row["runs"]) == 2 for row in block["budgets"]["all"]["rows"].values())  # one per loop
    pair = block["paired"]["2"]["iter2-iter1"]
    assert len(pair["runs"]) == 2 and pair["low"] <= pair["mean"] <= pair["high"]
    assert_picture(run / "report.png", min_width=800, min_height=400)
    code = pipeline.main([str(a) for a in args])  # finished: nothing runs again
    assert code == 0 and capsys.readouterr().out.count("skipped") == 2 * 12


@pytest.mark.slow
def test_a_budget_fine_tuning_trains_on_its_subset_and_validates_on_valid(pool_data, tmp_path):
    from beats_fairseq.pipeline.runner import Runner

    config = PipelineConfig(data=str(pool_data), out=str(tmp_path / "run"), eval="finetune", eval_seeds=1,
                            label_budgets=["2"], overrides=["finetune:optimization.max_update=4"])
    stages = [s for s in plan(config) if s.name in ("subset_2perclass_seed1", "eval_random_2perclass_seed1")]
    summary = Runner(config, stages, say=lambda text: None).run()
    stage = stages[1]
    log = stage.log_path.read_text()
    assert f"{tmp_path / 'run' / 'budgets' / 'train_2_seed1'}: 12 clips, 6 classes" in log and "valid: 36 clips" in log
    score = json.loads(stage.output.read_text())
    assert score["encoder"] == "random" and score["split"] == "test" and 0 <= score["value"] <= 1
    assert summary["evaluation"]["budgets"]["2"]["rows"]["random"]["runs"] == [score["value"]]
