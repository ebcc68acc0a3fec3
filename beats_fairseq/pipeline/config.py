"""What a pipeline run does: :class:`PipelineConfig` (one field per ``beats-pipeline`` option).

Light on purpose (no torch, numpy or fairseq at import): ``beats-pipeline --help`` reads its help
texts from here.
"""

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional

from ..constants import POOLINGS, PROBES

TRAINING_KINDS = ("pretrain", "tokenizer", "finetune")
# Recipe name per scale and role (the yaml in the role's examples/ folder). "supervised_tokenizer" is
# the iter3+ tokenizer, distilled from a fine-tuned classifier (paper: peak LR 5e-4, logits).
# "continue" is the pre-training of a run started from an existing model (--init-from: examples/beats_continue).
# "budget_finetune" is the evaluation fine-tuning on a label budget of n clips per class (--label-budgets n);
# the whole labelled split (all) and the supervised teacher use "finetune".
RECIPES = {
    "tiny": {"pretrain": "tiny", "continue": "tiny", "tokenizer": "tiny", "supervised_tokenizer": "tiny",
             "finetune": "tiny", "budget_finetune": "tiny"},
    "small": {"pretrain": "small", "continue": "small", "tokenizer": "small", "supervised_tokenizer": "small",
              "finetune": "small", "budget_finetune": "small_few_labels"},
    "base": {"pretrain": "pretrain_as2m", "continue": "iter3", "tokenizer": "tokenizer_as2m",
             "supervised_tokenizer": "tokenizer_as2m_supervised_teacher", "finetune": "as2m",
             "budget_finetune": "as20k"},
}
RECIPE_ROLES = ("pretrain", "continue", "tokenizer", "supervised_tokenizer", "finetune", "budget_finetune")
# The examples/ folder of each role ("pretrain": beats_iter1, beats_iter2, ... by iteration).
ROLE_FOLDERS = {"continue": "beats_continue", "tokenizer": "beats_tokenizer",
                "supervised_tokenizer": "beats_tokenizer", "finetune": "beats_finetune",
                "budget_finetune": "beats_finetune"}
# Update counts of the tiny scale: the loop finishes in minutes on 2 CPU cores.
TINY_UPDATES = {"pretrain": 100, "tokenizer": 60, "finetune": 60}
EVAL_MODES = ("probe", "finetune")
LABEL_MODES = ("on-the-fly", "precomputed")
ALL = "all"  # the label budget of the whole labelled train split
VALID = "valid"  # the labelled split the probes other than linear stop early on


class PipelineError(RuntimeError):
    """A pipeline that cannot run as configured (or a stage that failed); the message says what to do."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class PipelineConfig:
    data: str = _help("folder with {split}.tsv manifests (train, valid, the evaluation split) and "
                      "{split}.{label_ext} labels for the evaluation (and labels.csv)")
    out: str = _help("run folder (RUN_DIR); reuse it to resume")
    scale: str = _help("tiny: the tiny recipes with %s updates (CPU, minutes, a smoke test); small: the small.yaml "
                       "recipes (the whole loop with fine-tuning evaluation, sized for a 30-minute budget on 2 CPU "
                       "cores for 1,000-3,000 clips of 1-2 s); base: the paper recipes"
                       % ", ".join(f"{k} {v}" for k, v in TINY_UPDATES.items()), default="tiny")
    iterations: int = _help("pre-training iterations (1 to 3; 1: iter1 alone, no tokenizer is trained)", default=2)
    init_from: Optional[str] = _help(
        "start the loop from this model (an official BEATs checkpoint or one of this project) instead of "
        "random-projection iter1: every pre-training iteration continues the previous model (the first this one; "
        "the continue recipe of the scale, examples/beats_continue), on the labels of a tokenizer distilled from "
        "the previous model, or of the tokenizer checkpoint (the first iteration); the model itself is evaluated "
        "too (as start)", default=None)
    tokenizer: Optional[str] = _help(
        "the tokenizer (an official Tokenizer_*.pt or one of this project) whose labels the first iteration "
        "pre-trains on instead of the random projection: from scratch, or with init_from continuing that model; "
        "None: the random projection, or with init_from a tokenizer distilled from that model first",
        default=None)
    supervised_teacher: bool = _help("iter3+: fine-tune iter2 on the labelled train split (examples/beats_finetune) "
                                     "and distil the last tokenizer from it (needs --iterations 3)", default=False)
    labels: str = _help("iter2+ labels: computed by the frozen tokenizer in every update (on-the-fly), or "
                        "precomputed once to disk (then task.crop=start)", default="on-the-fly")
    pretrain_split: str = _help("manifest split ({data}/{split}.tsv, labels not needed) every pre-training and "
                                "tokenizer stage trains on (dataset.train_subset), e.g. an unlabelled pool; they "
                                "validate on valid. The supervised teacher, the evaluation fine-tunings and the "
                                "fbank baseline keep the labelled train split", default="train")
    loop_seeds: int = _help("run the whole loop (pre-training, tokenizers, supervised teacher, evaluation) this many "
                            "times with common.seed 1..N, in RUN_DIR/seed{k}; RUN_DIR/summary.json aggregates them "
                            "(1: one loop in RUN_DIR itself, the recipes' seeds)", default=1)
    loop: Optional[int] = _help("which loop of loop_seeds this config runs (1..loop_seeds; set by loops(), in "
                                "RUN_DIR/seed{k}); None: the whole run", default=None)
    evaluate: bool = _help("evaluate the encoders and run the fbank baseline (False: --no-eval)", default=True)
    eval: str = _help("how every encoder (and a random init) is evaluated on the evaluation split, beside a "
                      "raw-fbank baseline: probe (logistic regression on frozen features) or finetune (the "
                      "fine-tuning recipe of --scale, --eval-seeds seeds each, best-validation checkpoint)",
                      default="probe")
    eval_split: str = _help("held-out split every evaluation is scored on", default="test")
    eval_train_split: str = _help("labelled split the probe and the fbank baseline are fit on", default="train")
    label_ext: str = _help("evaluation labels are {split}.{ext} (lbl: single-label, accuracy; mlbl: multi-label, "
                           "mAP)", default="lbl")
    eval_seeds: int = _help("fine-tuning seeds per encoder with --eval finetune (common.seed 1..N; in loop k of "
                            "--loop-seeds, (k-1)*N+1..k*N); on a label budget, the fine-tunings of seed s, the "
                            "fbank baseline and the probe train on the subset drawn with seed s", default=3)
    label_budgets: List[str] = _help(
        "labelled clips per class the evaluation fine-tunings, the probe and the fbank baseline are trained on: "
        "seeded, class-stratified subsets of the labelled train split, one per evaluation seed (the same for every "
        "encoder; multi-label clips count for their first class), written to RUN_DIR/budgets/; all: the whole "
        "split. Validation keeps the whole valid split", default_factory=lambda: ["all"])
    probe_pooling: str = _help("--eval probe: clip feature pooled over patches: bands (mean and std over time of each "
                                "frequency band), mean or mean+std (over all patches)", default="bands")
    probe_layer: Optional[int] = _help("--eval probe: encoder layer, 0-based; None: the last", default=None)
    probes: Optional[List[str]] = _help(
        "the probes run on every encoder, of %s (linear: logistic regression on one layer; weighted-layers: a "
        "learnt weighted sum of all layers, SUPERB-style; mlp: a HEAR-style MLP; the last two stop early on a "
        "labelled valid split). --eval probe: None runs all of them when valid is labelled, else linear. --eval "
        "finetune: these probes also run, beside the fine-tunings (None: none)"
        % ", ".join(PROBES), default=None)
    recipes: Dict[str, str] = _help("recipe name per role (%s) instead of the scale's" % ", ".join(RECIPE_ROLES),
                                    default_factory=dict)
    overrides: List[str] = _help("Hydra overrides for the stages: key=value for every stage whose recipe has the "
                                 "key, pretrain:key=value, tokenizer:key=value, finetune:key=value for one kind of "
                                 "stage, budget_finetune:key=value for the fine-tunings on a label budget; any "
                                 "override fairseq-hydra-train accepts (+key, ++key, ~key)",
                                 default_factory=list)
    jobs: Optional[int] = _help("evaluation fine-tunings run this many at once, each with OMP_NUM_THREADS = CPU cores "
                                "// jobs unless OMP_NUM_THREADS is set (None: 2 without a GPU on a machine with 2 or "
                                "more cores, else 1)", default=None)
    device: str = _help("device of the stages that run in this process (labels, probe, fbank, scoring)",
                        default="auto")
    verbose: bool = _help("echo every line of the stages' logs", default=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.out).resolve()

    @property
    def data_dir(self) -> str:
        return str(Path(self.data).resolve())

    def recipe(self, role: str) -> str:
        """The recipe name of ``role`` (``RECIPE_ROLES``)."""
        return self.recipes.get(role) or RECIPES[self.scale][role]

    def probe_names(self) -> tuple:
        """The probes ``--eval probe`` runs: ``probes``, or all of them when the ``valid`` split is labelled (the
        early stopping of all but linear), else linear. Asked-for probes that need it without it raise
        :class:`PipelineError`."""
        data = Path(self.data_dir)
        labelled = (data / f"{VALID}.tsv").is_file() and (data / f"{VALID}.{self.label_ext}").is_file()
        usable = labelled and VALID not in (self.eval_split, self.eval_train_split)
        if self.probes is None:
            return PROBES if usable else ("linear",)
        stopping = [p for p in self.probes if p != "linear"]
        if stopping and not usable:
            raise PipelineError(f"--probes {','.join(self.probes)}: {', '.join(stopping)} stop early on a labelled "
                                f"{VALID} split ({data / VALID}.tsv and .{self.label_ext}, neither the evaluation "
                                "nor the training split); give --probes linear, or add that split (probes)")
        return tuple(p for p in PROBES if p in self.probes)

    def check(self) -> None:
        """Raise :class:`PipelineError` naming the first setting that cannot run."""
        choices = {"scale": tuple(RECIPES), "iterations": (1, 2, 3),
                   "labels": LABEL_MODES, "eval": EVAL_MODES, "probe_pooling": POOLINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PipelineError(f"{name} {getattr(self, name)!r}: choose one of {', '.join(map(str, allowed))}")
        unknown = sorted(set(self.recipes) - set(RECIPE_ROLES))
        if unknown:
            raise PipelineError(f"recipes {unknown}: the roles are {', '.join(RECIPE_ROLES)}")
        if not (Path(self.data) / "train.tsv").is_file():
            raise PipelineError(f"--data {self.data}: no train.tsv there")
        pool = Path(self.data) / f"{self.pretrain_split}.tsv"
        if not pool.is_file():
            raise PipelineError(f"--pretrain-split {self.pretrain_split}: {pool} does not exist (pretrain_split names "
                                "a manifest in --data)")
        for probe in self.probes or ():
            if probe not in PROBES:
                raise PipelineError(f"--probes {','.join(self.probes)}: {probe!r} is not a probe; choose from "
                                    f"{', '.join(PROBES)} (probes)")
        if self.probes is not None and not self.probes:
            raise PipelineError(f"--probes is empty: give e.g. linear or {','.join(PROBES)} (probes)")
        if self.evaluate and (self.eval == "probe" or self.probes):
            self.probe_names()
        if self.loop_seeds < 1:
            raise PipelineError(f"--loop-seeds must be >= 1, got {self.loop_seeds} (loop_seeds)")
        if self.loop is not None and not 1 <= self.loop <= self.loop_seeds:
            raise PipelineError(f"loop {self.loop}: choose one of 1..{self.loop_seeds} (loop_seeds)")
        self.budgets()
        for name in ("init_from", "tokenizer"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise PipelineError(f"--{name.replace('_', '-')} {path}: no such file ({name})")
        if self.supervised_teacher and self.iterations != 3:
            raise PipelineError("--supervised-teacher distils the tokenizer of iter3 (iter3+) from a fine-tuned iter2: "
                                "add --iterations 3 (supervised_teacher needs iterations=3)")
        if self.eval_seeds < 1:
            raise PipelineError(f"--eval-seeds must be >= 1, got {self.eval_seeds} (eval_seeds)")
        if self.jobs is not None and self.jobs < 1:
            raise PipelineError(f"--jobs {self.jobs}: give 1 or more (jobs)")


    def budgets(self) -> List[str]:
        """``label_budgets`` checked and in order, the largest (``all``) last."""
        numbers, whole = [], False
        for item in self.label_budgets:
            text = str(item).strip()
            if text == ALL:
                whole = True
            elif text.isdigit() and int(text) > 0:
                numbers.append(int(text))
            else:
                raise PipelineError(f"--label-budgets {','.join(map(str, self.label_budgets))}: {text!r} is neither a "
                                    f"number of clips per class >= 1 nor {ALL} (label_budgets)")
        if not numbers and not whole:
            raise PipelineError("--label-budgets is empty: give e.g. 10,all (label_budgets)")
        return [str(n) for n in sorted(set(numbers))] + ([ALL] if whole else [])

    @property
    def looped(self) -> bool:
        """Several loops: each in RUN/seed{k} with common.seed k."""
        return self.loop_seeds > 1

    def loops(self) -> List["PipelineConfig"]:
        """The config of every loop: this one, or one per seed in ``RUN_DIR/seed{k}`` (``loop`` k)."""
        if not self.looped:
            return [replace(self, loop=1)]
        return [replace(self, out=str(Path(self.out) / f"seed{k}"), loop=k) for k in range(1, self.loop_seeds + 1)]

    @property
    def loop_seed(self) -> int:
        """The seed of this loop (1 for a run of one loop)."""
        return self.loop or 1

    @property
    def finetune_seeds(self) -> List[int]:
        """The ``common.seed`` of the evaluation fine-tunings of this loop."""
        first = (self.loop_seed - 1) * self.eval_seeds
        return list(range(first + 1, first + self.eval_seeds + 1))


def help_of(name: str) -> str:
    """The help text of the :class:`PipelineConfig` field ``name``."""
    return next(f.metadata["help"] for f in fields(PipelineConfig) if f.name == name)
