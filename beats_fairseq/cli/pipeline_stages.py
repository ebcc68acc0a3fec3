"""beats-pipeline, planning: which stages run, in which order, and each stage's config.

A stage's config is its recipe yaml (chosen by ``--scale`` and the stage's role, see
``RECIPES``) + the stage's paths (``task.data``, the previous stage's checkpoint as teacher,
tokenizer or pre-trained model) + the tiny-scale update counts + the pass-through overrides.

Evaluation stages (``--eval``): ``fbank`` (logistic regression on raw fbank statistics) and
either ``probe`` (linear probe of every encoder) or, with ``--eval finetune``, one fine-tuning
stage ``eval_<encoder>_seed<s>`` per encoder (``random`` and every iteration) and seed; each
is scored on the test split from its best-validation checkpoint.
"""

from pathlib import Path
from typing import Dict, List, Optional

from ..recipes import recipe_dir
from .common import CliError

KINDS = ("pretrain", "tokenizer", "finetune")
# Recipe name per scale and role (the yaml in the role's examples/ folder). "supervised_tokenizer" is
# the iter3+ tokenizer, distilled from a fine-tuned classifier's logits (paper: peak LR 5e-4).
RECIPES = {
    "tiny": {"pretrain": "tiny", "tokenizer": "tiny", "supervised_tokenizer": "tiny", "finetune": "tiny"},
    "small": {"pretrain": "small", "tokenizer": "small", "supervised_tokenizer": "small", "finetune": "small"},
    "base": {"pretrain": "pretrain_as2m", "tokenizer": "tokenizer_as2m",
             "supervised_tokenizer": "tokenizer_as2m_supervised_teacher", "finetune": "as2m"},
}
RECIPE_ROLES = ("pretrain", "tokenizer", "supervised_tokenizer", "finetune")
# Update counts of the tiny scale: the loop finishes in minutes on 2 CPU cores.
TINY_UPDATES = {"pretrain": 100, "tokenizer": 60, "finetune": 60}
EVAL_MODES = ("probe", "finetune")
RANDOM = "random"


def tiny_settings(kind: str) -> Dict[str, object]:
    n = TINY_UPDATES[kind]
    out = {"optimization.max_update": n, "lr_scheduler.warmup_updates": max(1, n // 10),
           "common.log_interval": 10}
    if kind == "finetune":
        out = {"optimization.max_update": n, "optimizer.groups.default.lr_scheduler.warmup_updates": n // 10,
               "common.log_interval": 10}
    else:
        # validate and save at half-way and at the end only (not after every epoch of the small corpus)
        out.update({"checkpoint.save_interval_updates": n // 2, "dataset.validate_interval_updates": n // 2,
                    "checkpoint.save_interval": 1000, "dataset.validate_interval": 1000})
    return out


# ---------------------------------------------------------------------------- stages
class Stage:
    def __init__(self, name: str, kind: str, title: str, run_dir: Path):
        self.name, self.kind, self.title = name, kind, title
        self.role = kind  # which recipe of RECIPES it uses (training stages)
        self.dir = run_dir / name
        self.config = None  # composed OmegaConf config (training stages)
        self.config_dir = None
        self.settings: Dict[str, object] = {}
        self.depends: List["Stage"] = []  # stages whose outputs this one reads
        self.pretrain: Optional["Stage"] = None  # labels stages: the pre-training stage they label for;
        # evaluation fine-tuning: the pre-training stage whose architecture a random init copies
        self.encoder: Optional[str] = None  # evaluation fine-tuning: which encoder ("random", "iter1", ...)
        self.score_split: Optional[str] = None  # evaluation fine-tuning: split the best checkpoint is scored on

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "checkpoint_last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "checkpoint_best.pt"

    @property
    def output(self) -> Optional[Path]:
        if self.kind in KINDS:
            return self.dir / "score.json" if self.score_split else self.checkpoint
        if self.kind == "labels":
            return self.dir / "labels"
        return self.dir / f"{self.kind}.json"

    @property
    def log_path(self) -> Path:
        return self.dir / ("train.log" if self.kind in KINDS else f"{self.kind}.log")


def plan(args, run_dir: Path) -> List[Stage]:
    """The ordered stages for ``args``, with their settings (not yet composed)."""
    data = str(Path(args.data).resolve())
    stages: List[Stage] = []
    supervised = args.supervised_teacher
    if supervised and args.iterations != 3:
        raise CliError("--supervised-teacher distils the tokenizer of iter3 (iter3+) from a fine-tuned iter2: "
                       "add --iterations 3")

    def pretrain(it: int, tokenizer: Optional[Stage]) -> Stage:
        st = Stage(f"iter{it}", "pretrain", f"iter{it} pre-training", run_dir)
        st.config_dir = recipe_dir(f"beats_iter{it}")
        st.settings = {"task.data": data}
        if tokenizer is not None:
            st.depends.append(tokenizer)
            st.settings["model.tokenizer_path"] = str(tokenizer.checkpoint)
            if args.labels == "precomputed":
                lab = Stage(f"labels_iter{it}", "labels", f"precompute iter{it} labels", run_dir)
                lab.depends, lab.pretrain = [tokenizer], st
                stages.append(lab)
                st.depends.append(lab)
                st.settings.update({"task.precomputed_labels": str(lab.output), "task.crop": "start"})
        stages.append(st)
        return st

    def tokenizer(it: int, teacher: Stage) -> Stage:
        st = Stage(f"tokenizer_iter{it}", "tokenizer", f"tokenizer distilled from {teacher.name}", run_dir)
        st.config_dir = recipe_dir("beats_tokenizer")
        st.settings = {"task.data": data, "model.teacher_path": str(teacher.checkpoint)}
        if teacher.kind == "finetune":  # the recipe says what to distil (logits in the paper's)
            st.role = "supervised_tokenizer"
        st.depends.append(teacher)
        stages.append(st)
        return st

    encoder = pretrain(1, None)
    for it in range(2, args.iterations + 1):
        teacher = encoder
        if supervised and it == args.iterations:
            teacher = Stage(f"finetune_iter{it - 1}", "finetune", f"fine-tune iter{it - 1} (supervised teacher)",
                            run_dir)
            teacher.config_dir = recipe_dir("beats_finetune")
            teacher.settings = {"task.data": data, "model.pretrained_path": str(encoder.checkpoint)}
            teacher.depends.append(encoder)
            stages.append(teacher)
        encoder = pretrain(it, tokenizer(it - 1, teacher))
    if not args.no_probe:
        stages += evaluation_stages(args, run_dir, data, [s for s in stages if s.kind == "pretrain"])
    return stages


def evaluation_stages(args, run_dir: Path, data: str, encoders: List[Stage]) -> List[Stage]:
    """The raw-fbank baseline, then the linear probe or the fine-tuning runs of every encoder."""
    split = args.probe_split
    fbank = Stage("fbank", "fbank", f"raw-fbank baseline on {split}", run_dir)
    if args.eval == "probe":
        probe = Stage("probe", "probe", f"linear probe on {split}", run_dir)
        probe.depends = list(encoders)
        return [fbank, probe]
    if args.eval_seeds < 1:
        raise CliError(f"--eval-seeds must be >= 1, got {args.eval_seeds}")
    out = [fbank]
    for name, source in [(RANDOM, None)] + [(e.name, e) for e in encoders]:
        for seed in range(1, args.eval_seeds + 1):
            init = "random init" if source is None else name
            st = Stage(f"eval_{name}_seed{seed}", "finetune", f"fine-tune {init}, seed {seed}, score on {split}",
                       run_dir)
            st.config_dir, st.encoder, st.score_split = recipe_dir("beats_finetune"), name, split
            st.pretrain = source or encoders[0]
            st.settings = {"task.data": data, "common.seed": seed,
                           "model.pretrained_path": None if source is None else str(source.checkpoint)}
            if source is not None:
                st.depends.append(source)
            out.append(st)
    return out


def parse_overrides(items: List[str]):
    out = []
    for item in items:
        add = item.startswith("+")
        kind, key_value = None, item.lstrip("+")
        head, sep, rest = key_value.partition(":")
        if sep and head in KINDS and "=" in rest:
            kind, key_value = head, rest
        if "=" not in key_value:
            raise CliError(f"override {item!r}: expected key=value (optionally prefixed with pretrain:, tokenizer: "
                           "or finetune:)")
        key, _, value = key_value.partition("=")
        add = add or key.startswith("+")
        out.append((kind, key.lstrip("+"), value, add, item))
    return out


def compose(stage: Stage, args, overrides) -> None:
    from omegaconf import OmegaConf

    names = dict(RECIPES[args.scale])
    for role in RECIPE_ROLES:
        chosen = getattr(args, f"{role}_config")
        if chosen:
            names[role] = chosen
    path = stage.config_dir / f"{names[stage.role]}.yaml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in stage.config_dir.glob("*.yaml")))
        raise CliError(f"stage {stage.name}: recipe {path} does not exist (available: {have}); "
                       f"choose one with --{stage.role.replace('_', '-')}-config NAME")
    cfg = OmegaConf.load(path)
    values = dict(tiny_settings(stage.kind)) if args.scale == "tiny" else {}
    values.update(stage.settings)
    if stage.encoder == RANDOM:  # a random init gets the architecture of the pre-trained encoders
        if stage.pretrain.config is None:
            compose(stage.pretrain, args, overrides)
        from ..modules.backbone import ARCH_FIELDS

        values.update({f"model.{k}": stage.pretrain.config.model[k] for k in ARCH_FIELDS
                       if k in stage.pretrain.config.model})
    values["checkpoint.save_dir"] = str(stage.dir / "checkpoints")
    values["common.tensorboard_logdir"] = str(stage.dir / "tensorboard")
    values["common.log_format"] = "json"  # the curves of report.png are read from these lines
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    for kind, key, value, add, item in overrides:
        if kind not in (None, stage.kind):
            continue
        if add or OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
            merged = OmegaConf.from_dotlist([f"{key}={value}"])
            cfg = OmegaConf.merge(cfg, merged)
    stage.config = cfg
    stage.recipe = path
