"""Which stages a run has, in which order, and what each one reads: :func:`plan`.

    iter1 -> tokenizer_iter1 -> [labels_iter2 ->] iter2 [-> (finetune_iter2 ->) tokenizer_iter2 -> iter3]
    -> [subset_<n>perclass_seed<s> ->] fbank[_<n>perclass_seed<s>] -> probe[_<n>perclass_seed<s>]
       | eval_<encoder>[_<n>perclass]_seed<s> for random and every iteration, per label budget

``tokenizers``: the labels of every iteration against the classes (:mod:`.diagnostics`), after the
training stages (``-> tokenizers ->`` before the first subset or fbank stage).

Pre-training and tokenizer stages train on ``pretrain_split`` (``dataset.train_subset``). A label
budget of n clips per class draws one class-stratified subset of the labelled train split per
evaluation seed s of the loop (``PipelineConfig.finetune_seeds``): a ``subset`` stage writes it
(``RUN_DIR/budgets/<split>_<n>_seed<s>.tsv`` and its labels, drawn with seed s), and the fbank baseline,
the probe and every encoder's fine-tuning of seed s train on it. Every encoder meets the same draws,
and a loop's result averages over several of them: with few labels, which clips are drawn moves a
score more than the pre-training seed does. Budget ``all``: the whole split, no suffix, one fbank
baseline and probe.
With ``loop_seeds`` > 1 every loop is planned alone from its own config (``PipelineConfig.loops``:
``RUN_DIR/seed{k}``, ``common.seed`` k for the training stages).

Started from an existing model (``init_from``, the encoder ``start``), every iteration continues
the previous model (``examples/beats_continue``) on the labels of a tokenizer distilled from it,
or, for iter1, of the given ``tokenizer``:

    [tokenizer_start ->] iter1 [-> tokenizer_iter1 -> iter2 ...] -> fbank -> probe | eval_... for start too

The given checkpoints are stages of kind ``model`` that never run and are not in the list: their
``checkpoint`` (and ``output``) is the file.

A training stage (``pretrain``, ``tokenizer``, ``finetune``) is a ``fairseq-hydra-train`` run
of the recipe of its role (``PipelineConfig.recipe``) in ``examples/<config dir>``, with the
stage's ``settings`` (its paths, the previous stage's checkpoint, the seed) on top; its config
is composed by :mod:`beats_fairseq.pipeline.compose`. The other stages run in this process
(:mod:`beats_fairseq.pipeline.steps`).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .config import ALL, TRAINING_KINDS, PipelineConfig, PipelineError

RANDOM = "random"
FBANK = "fbank"
START = "start"  # the encoder of init_from
TOKENIZERS = "tokenizers"  # the labels of every iteration against the classes (diagnostics.py)


@dataclass(eq=False)
class Stage:
    name: str
    kind: str  # a training kind (TRAINING_KINDS), "labels", "fbank" or "probe"
    title: str
    dir: Path
    config_dir: Optional[str] = None  # training stages: the recipe folder in examples/
    role: Optional[str] = None  # training stages: which recipe of the scale (RECIPE_ROLES)
    settings: Dict[str, object] = field(default_factory=dict)  # config keys the pipeline sets (subset: split, seed)
    depends: List["Stage"] = field(default_factory=list, repr=False)  # stages whose outputs this one reads
    # labels stages: the pre-training stage they label for; random-init evaluation: the pre-training
    # stage whose architecture it copies
    pretrain: Optional["Stage"] = field(default=None, repr=False)
    encoder: Optional[str] = None  # evaluation fine-tuning: "random", "iter1", ...
    budget: Optional[str] = None  # evaluation stages: the label budget ("10", "all"); subset: its budget
    score_split: Optional[str] = None  # evaluation fine-tuning: split its best checkpoint is scored on
    config: object = field(default=None, repr=False)  # training stages: the composed config (compose.py)
    hydra_overrides: List[str] = field(default_factory=list)  # training stages: hydra.* for the command line
    given: Optional[Path] = None  # kind "model": the checkpoint file (init_from, tokenizer)

    @property
    def training(self) -> bool:
        return self.kind in TRAINING_KINDS

    @property
    def checkpoint(self) -> Path:
        return self.given if self.given is not None else self.dir / "checkpoints" / "checkpoint_last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "checkpoint_best.pt"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    @property
    def output(self) -> Path:
        """What the stage leaves behind when it has finished."""
        if self.given is not None:
            return self.given
        if self.training:
            return self.dir / "score.json" if self.score_split else self.checkpoint
        if self.kind == "labels":
            return self.dir / "labels"
        if self.kind == "subset":
            return subset_manifest(self.dir, self.settings["split"], self.budget, self.settings["seed"])
        return self.dir / f"{self.kind}.json"

    @property
    def log_path(self) -> Path:
        return self.dir / ("train.log" if self.training else f"{self.kind}.log")


def plan(config: PipelineConfig) -> List[Stage]:
    """The ordered stages of ``config`` (configs not yet composed); of one loop: with ``loop_seeds`` > 1,
    plan each of ``config.loops()``."""
    config.check()
    if config.looped and config.loop is None:
        raise PipelineError(f"loop_seeds {config.loop_seeds}: plan each loop of config.loops() (RUN_DIR/seed{{k}})")
    start, tokenizer = (given(config.init_from, START, "the model of --init-from"),
                        given(config.tokenizer, "tokenizer", "the tokenizer of --tokenizer"))
    stages = training_stages(config, start, tokenizer)
    if config.evaluate:
        encoders = [s for s in stages if s.kind == "pretrain"]
        stages += tokenizer_stage(config, stages) + evaluation_stages(config, ([start] if start else []) + encoders)
    return stages


def given(path: Optional[str], name: str, title: str) -> Optional[Stage]:
    """A checkpoint the run starts from, as a stage of kind ``model`` (never run)."""
    if not path:
        return None
    path = Path(path).resolve()
    return Stage(name, "model", f"{title} ({path.name})", path.parent, given=path)


def training_stages(config: PipelineConfig, start: Optional[Stage] = None,
                    first_tokenizer: Optional[Stage] = None) -> List[Stage]:
    """The pre-training iterations with their tokenizers (and labels, and the supervised teacher);
    from ``start`` (init_from) with ``first_tokenizer`` (tokenizer) when given."""
    run_dir, data = config.run_dir, config.data_dir
    stages: List[Stage] = []

    seed = {"common.seed": config.loop_seed} if config.looped else {}  # the recipes' seed in a run of one loop
    unlabelled = {"task.data": data, "dataset.train_subset": config.pretrain_split, **seed}

    def pretrain(it: int, tokenizer: Optional[Stage], init: Optional[Stage] = None) -> Stage:
        st = Stage(f"iter{it}", "pretrain", f"iter{it} pre-training", run_dir / f"iter{it}",
                   config_dir=f"beats_iter{it}", role="pretrain", settings=dict(unlabelled))
        if init is not None:  # continued pre-training of the previous model
            st.title, st.config_dir, st.role = f"pre-training continued from {init.name}", "beats_continue", "continue"
            st.depends.append(init)
            st.settings["model.init_from"] = str(init.checkpoint)
        elif tokenizer is not None and tokenizer.kind == "model":  # iter1 from scratch on --tokenizer's labels
            st.title = f"iter1 pre-training on the labels of {tokenizer.title}"
        if tokenizer is not None:
            st.depends.append(tokenizer)
            st.settings["model.tokenizer_path"] = str(tokenizer.checkpoint)
            if config.labels == "precomputed":
                name = f"labels_iter{it}"
                labels = Stage(name, "labels", f"precompute iter{it} labels", run_dir / name, depends=[tokenizer],
                               pretrain=st)
                stages.append(labels)
                st.depends.append(labels)
                st.settings.update({"task.precomputed_labels": str(labels.output), "task.crop": "start"})
        stages.append(st)
        return st

    def tokenizer(encoder: Stage, teacher: Stage) -> Stage:
        name = f"tokenizer_{encoder.name}"
        role = "supervised_tokenizer" if teacher.kind == "finetune" else "tokenizer"
        st = Stage(name, "tokenizer", f"tokenizer distilled from {teacher.name}", run_dir / name,
                   config_dir="beats_tokenizer", role=role, depends=[teacher],
                   settings={**unlabelled, "model.teacher_path": str(teacher.checkpoint)})
        stages.append(st)
        return st

    encoder = start or pretrain(1, first_tokenizer)
    for it in range(1 if start else 2, config.iterations + 1):
        teacher = encoder
        if config.supervised_teacher and it == config.iterations:
            name = f"finetune_{encoder.name}"
            teacher = Stage(name, "finetune", f"fine-tune {encoder.name} (supervised teacher)", run_dir / name,
                            config_dir="beats_finetune", role="finetune", depends=[encoder],
                            settings={"task.data": data, "model.pretrained_path": str(encoder.checkpoint), **seed})
            stages.append(teacher)
        labels = first_tokenizer if start and it == 1 and first_tokenizer else tokenizer(encoder, teacher)
        encoder = pretrain(it, labels, encoder if start else None)
    return stages


def budget_suffix(budget: Optional[str]) -> str:
    """``""`` for the whole split, ``"_10perclass"`` for 10 clips per class."""
    return "" if budget in (None, ALL) else f"_{budget}perclass"


def subset_manifest(folder: Path, split: str, budget: str, seed: int) -> Path:
    """Where the subset of ``budget`` clips per class of ``split`` drawn with ``seed`` is written (its labels
    beside it)."""
    return folder / f"{split}_{budget}_seed{seed}.tsv"


def evaluation_stages(config: PipelineConfig, encoders: List[Stage]) -> List[Stage]:
    """Per label budget, the class-stratified subsets (one per evaluation seed) and the raw-fbank baseline on
    each; then the fine-tuning runs of every encoder (all fine-tunings together, so that they run in parallel),
    and the probe stages: the evaluation of ``--eval probe``, beside fine-tuning with ``--probes``."""
    run_dir, split = config.run_dir, config.eval_split
    head, tail, probes = [], [], []
    for budget in config.budgets():
        suffix = budget_suffix(budget)
        subsets: Dict[Optional[int], Optional[Stage]] = {None: None} if budget == ALL else {
            seed: Stage(f"subset{suffix}_seed{seed}", "subset",
                        f"{budget} clips per class of {config.eval_train_split}, seed {seed}", run_dir / "budgets",
                        budget=budget, settings={"split": config.eval_train_split, "seed": seed})
            for seed in config.finetune_seeds}
        for seed, subset in subsets.items():
            tag, needs = ("", []) if subset is None else (f"_seed{seed}", [subset])
            on = "" if subset is None else f", {budget} per class (seed {seed})"
            head += needs + [Stage(FBANK + suffix + tag, "fbank", f"raw-fbank baseline on {split}{on}",
                                   run_dir / (FBANK + suffix + tag), budget=budget, depends=list(needs))]
            if config.eval == "probe" or config.probes:
                what = "linear probe" if config.eval == "probe" else f"{', '.join(config.probes)} probes"
                probes.append(Stage("probe" + suffix + tag, "probe", f"{what} on {split}{on}",
                                    run_dir / ("probe" + suffix + tag), budget=budget,
                                    depends=list(encoders) + needs))
        if config.eval == "probe":
            continue
        for name, source in [(RANDOM, None)] + [(e.name, e) for e in encoders]:
            for seed in config.finetune_seeds:
                stage, subset = f"eval_{name}{suffix}_seed{seed}", subsets.get(seed)
                init, needs = "random init" if source is None else name, [] if subset is None else [subset]
                on = "" if subset is None else f", {budget} per class"
                train = {} if subset is None else {"dataset.train_subset": str(subset.output.with_suffix(""))}
                tail.append(Stage(
                    stage, "finetune", f"fine-tune {init}{on}, seed {seed}, score on {split}", run_dir / stage,
                    config_dir="beats_finetune", role="finetune" if subset is None else "budget_finetune",
                    encoder=name, score_split=split, budget=budget,
                    pretrain=source or encoders[0], depends=([] if source is None else [source]) + needs,
                    settings={"task.data": config.data_dir, "common.seed": seed, **train,
                              "model.pretrained_path": None if source is None else str(source.checkpoint)}))
    return head + tail + probes


def label_source(pretrain: Stage) -> Stage:
    """The stage whose tokenizer labels ``pretrain``: a tokenizer (or given) stage, else itself (random projection)."""
    return next((d for d in pretrain.depends if d.kind in ("tokenizer", "model") and d.name != START), pretrain)


def tokenizer_stage(config: PipelineConfig, stages: List[Stage]) -> List[Stage]:
    """``[the tokenizers stage]`` after the training ``stages`` (none without evaluation): its ``settings["labels"]``
    names, for every pre-training iteration, the stage whose labels it learnt from (:mod:`.diagnostics`)."""
    if not config.evaluate:
        return []
    sources = {s.name: label_source(s) for s in stages if s.kind == "pretrain"}
    return [Stage(TOKENIZERS, TOKENIZERS, f"tokenizer labels against the classes of {config.eval_train_split}",
                  config.run_dir / TOKENIZERS, depends=list(dict.fromkeys(sources.values())),
                  settings={"labels": {name: source.name for name, source in sources.items()}})]
