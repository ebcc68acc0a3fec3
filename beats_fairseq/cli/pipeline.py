"""beats-pipeline: the whole BEATs loop on one manifest folder, from one command.

    iter1 pre-training -> tokenizer_iter1 -> iter2 pre-training [-> tokenizer_iter2 -> iter3]
    -> raw-fbank baseline -> evaluation of every iteration's encoder and of a random one

or, with ``--init-from CKPT [--tokenizer TOK]``, from an existing model: every iteration continues the
previous model's pre-training (``examples/beats_continue``), the first on the labels of TOK or of a
tokenizer distilled from CKPT, and CKPT itself is evaluated too. ``--tokenizer TOK`` alone pre-trains
iter1 from scratch on TOK's labels.

This module parses the arguments into a :class:`beats_fairseq.pipeline.PipelineConfig` and runs
it with :func:`beats_fairseq.pipeline.run_pipeline` (what the stages are, how their configs are
composed, how a run resumes and what it writes: ``beats_fairseq/pipeline/`` and docs/iterations.md).
"""

import argparse
import os
import shlex
import sys

from ..pipeline.config import EVAL_MODES, LABEL_MODES, RECIPE_ROLES, RECIPES, ROLE_FOLDERS, PipelineConfig, help_of
from ..constants import POOLINGS
from .common import CliError, add_deprecated_alias, run_main

# old option -> new option (the old names work for one more release, with a warning)
RENAMED = {"--probe-split": "--eval-split", "--probe-train-split": "--eval-train-split",
           "--probe-label-ext": "--label-ext", "--no-probe": "--no-eval"}


def _help(name: str, default=None) -> str:
    text = help_of(name)
    return text if default is None else f"{text} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-pipeline",
        description="Run the BEATs iterations on a manifest folder: iter1 pre-training -> tokenizer -> iter2 "
                    "pre-training [-> tokenizer -> iter3], each a fairseq-hydra-train run in RUN_DIR/<stage>, then a "
                    "raw-fbank baseline and a linear probe (--eval probe) or fine-tuning runs (--eval finetune) of "
                    "every iteration's encoder beside a random one, on all labels or on label budgets (clips per "
                    "class). --pretrain-split pre-trains on an unlabelled pool; --loop-seeds N repeats the whole loop "
                    "with N seeds and reports mean ± std and paired iteration differences. With --init-from, the loop starts from an "
                    "existing model instead: every iteration continues the previous model's pre-training. Rerunning "
                    "the same command "
                    "resumes: finished stages are skipped, an interrupted one continues from its checkpoint.",
        epilog="Overrides use Hydra's grammar, with the meaning fairseq-hydra-train gives them: key=value (every stage "
               "whose recipe has the key), +key=value (add), ++key=value (add or set), ~key (delete); "
               "pretrain:, tokenizer: or finetune: in front restricts one to a kind of stage, budget_finetune: to "
               "the fine-tunings on a label budget. Example: "
               "beats-pipeline --data demo_data --out runs/pipeline_tiny pretrain:optimization.max_update=200",
    )
    parser.add_argument("--data", required=True, help=_help("data"))
    parser.add_argument("--out", required=True, help=_help("out"))
    parser.add_argument("--scale", choices=sorted(RECIPES), default="tiny", help=_help("scale", "tiny"))
    parser.add_argument("--iterations", type=int, choices=[1, 2, 3], default=2, help=_help("iterations", 2))
    parser.add_argument("--init-from", metavar="CKPT", default=None, help=_help("init_from"))
    parser.add_argument("--tokenizer", metavar="CKPT", default=None, help=_help("tokenizer"))
    parser.add_argument("--supervised-teacher", action="store_true", help=_help("supervised_teacher"))
    parser.add_argument("--labels", choices=LABEL_MODES, default="on-the-fly", help=_help("labels", "on-the-fly"))
    parser.add_argument("--pretrain-split", metavar="NAME", default="train", help=_help("pretrain_split", "train"))
    parser.add_argument("--loop-seeds", metavar="N", type=int, default=1, help=_help("loop_seeds", 1))
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval", choices=EVAL_MODES, default="probe", help=_help("eval", "probe"))
    evaluation.add_argument("--eval-split", default="test", help=_help("eval_split", "test"))
    evaluation.add_argument("--eval-train-split", default="train", help=_help("eval_train_split", "train"))
    evaluation.add_argument("--label-ext", default="lbl", help=_help("label_ext", "lbl"))
    evaluation.add_argument("--eval-seeds", type=int, default=3, help=_help("eval_seeds", 3))
    evaluation.add_argument("--label-budgets", metavar="N,...", type=budget_list, default=["all"],
                            help=_help("label_budgets", "all") + "; e.g. 10,all")
    evaluation.add_argument("--probe-pooling", choices=POOLINGS, default="bands", help=_help("probe_pooling", "bands"))
    evaluation.add_argument("--probe-layer", type=int, default=None,
                            help=_help("probe_layer").replace("; None: the last", " (default: the last)"))
    evaluation.add_argument("--probes", metavar="NAME,...", type=budget_list, default=None,
                            help=_help("probes").replace("None runs", "by default").replace("(None: none)", "(default: none)")
                            + "; e.g. linear")
    evaluation.add_argument("--no-eval", action="store_true", help="no evaluation at all (no fbank baseline either)")
    for old, new in RENAMED.items():
        add_deprecated_alias(parser, old, new)
    for role in RECIPE_ROLES:
        what = {"supervised_tokenizer": "iter3+ tokenizer (--supervised-teacher)",
                "continue": "continued pre-training (--init-from)",
                "finetune": "fine-tuning (on all labels, and the supervised teacher)",
                "budget_finetune": "evaluation fine-tuning on a label budget (--label-budgets N)"}.get(role, role)
        folder = ROLE_FOLDERS.get(role, "beats_iterN")
        parser.add_argument(f"--{role.replace('_', '-')}-config", default=None, metavar="NAME",
                            help=f"{what} recipe name in examples/{folder} (default: "
                                 + ", ".join(f"{RECIPES[s][role]} with --scale {s}" for s in sorted(RECIPES)) + ")")
    parser.add_argument("--jobs", type=int, default=None,
                        help=_help("jobs").replace("(None: ", "(default: ") + "; docs/small_scale.md has the timings")
    parser.add_argument("--device", default="auto", help=_help("device", "auto"))
    parser.add_argument("--verbose", action="store_true", help=_help("verbose"))
    parser.add_argument("--dry-run", action="store_true",
                        help="write every stage's config and print the plan without running anything")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the stages (see below)")
    return parser


def budget_list(text: str):
    """``"10,all"`` -> ``["10", "all"]``, ``"linear,mlp"`` -> ``["linear", "mlp"]`` (checked by
    ``PipelineConfig.check``)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def config_from(args) -> PipelineConfig:
    recipes = {role: getattr(args, f"{role}_config") for role in RECIPE_ROLES if getattr(args, f"{role}_config")}
    return PipelineConfig(
        data=args.data, out=args.out, scale=args.scale, iterations=args.iterations, init_from=args.init_from,
        tokenizer=args.tokenizer,
        supervised_teacher=args.supervised_teacher, labels=args.labels, pretrain_split=args.pretrain_split,
        loop_seeds=args.loop_seeds, label_budgets=args.label_budgets, evaluate=not args.no_eval, eval=args.eval,
        eval_split=args.eval_split, eval_train_split=args.eval_train_split, label_ext=args.label_ext,
        eval_seeds=args.eval_seeds, probe_pooling=args.probe_pooling, probe_layer=args.probe_layer, probes=args.probes,
        recipes=recipes, overrides=list(args.overrides), jobs=args.jobs, device=args.device, verbose=args.verbose)


def command_string(argv) -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    head = ["beats-pipeline"] if prog == "beats-pipeline" else ["python", "-m", "beats_fairseq.cli.pipeline"]
    return " ".join(shlex.quote(a) for a in [*head, *argv])


def run(args, argv) -> int:
    from ..pipeline import PipelineError, prepare, run_pipeline
    from ..pipeline.launch import fairseq_train_command

    config = config_from(args)
    try:
        if not args.dry_run:
            run_pipeline(config, say=lambda text: print(text, flush=True), command=command_string(argv))
            return 0
        stages = prepare(config)
    except PipelineError as exc:
        raise CliError(str(exc)) from None
    for k, stage in enumerate(stages, start=1):
        where = f"{stage.dir}/stage.yaml" if stage.training else str(stage.output)
        print(f"[stage {k}/{len(stages)}] {stage.name}: {stage.title} -> {where}")
        if stage.training:
            print("    " + " ".join(shlex.quote(c) for c in fairseq_train_command(stage.dir, stage.hydra_overrides)))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return run_main("beats-pipeline", build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
