"""The iterative BEATs loop as a library: plan, run (and resume), report.

    from beats_fairseq.pipeline import PipelineConfig, run_pipeline

    summary = run_pipeline(PipelineConfig(data="demo_data", out="runs/p", eval="finetune", eval_seeds=2,
                                          overrides=["finetune:optimization.max_update=100"]))

* :mod:`.config`: :class:`PipelineConfig` (every ``beats-pipeline`` option), the recipes of each scale;
* :mod:`.plan`: :func:`plan`, the ordered :class:`Stage` list of a config;
* :mod:`.compose`: each training stage's config, composed by Hydra as ``fairseq-hydra-train`` does;
* :mod:`.budgets`: the label budgets' subsets; :mod:`.aggregate`: the evaluation over budgets and
  loop seeds, paired differences;
* :mod:`.runner`: :class:`~.runner.Runner` runs the stages, skips finished ones, resumes the others;
  :mod:`.steps` is what each kind of stage does, :mod:`.launch` the child processes, :mod:`.state`
  ``state.json``;
* :mod:`.report` (``summary.json``, ``summary.md``, ``report.html``), :mod:`.figure` (``report.png``)
  and :mod:`.events` (the stages' TensorBoard curves).

The ``beats-pipeline`` command (``beats_fairseq/cli/pipeline.py``) parses its arguments into a
:class:`PipelineConfig` and calls :func:`run_pipeline`.
"""

from typing import Callable, Optional

from .config import EVAL_MODES, RECIPE_ROLES, RECIPES, TINY_UPDATES, PipelineConfig, PipelineError  # noqa: F401
from .plan import Stage, plan  # noqa: F401


def run_pipeline(config: PipelineConfig, say: Callable[[str], None] = print, command: Optional[str] = None) -> dict:
    """Run (or resume) the pipeline of ``config`` in ``config.out``; returns the summary (``summary.json``).

    With ``loop_seeds`` > 1, every loop runs (or resumes) in ``RUN_DIR/seed{k}`` in turn, and
    ``RUN_DIR/summary.json`` combines their evaluations (:mod:`.aggregate`).
    ``say`` prints the progress lines; ``command`` is recorded as the run's command (default: the config).
    """
    from .report import write_loops_summary
    from .runner import Runner

    config.check()
    if not config.looped:
        return Runner(config.loops()[0], say=say, command=command).run()
    summaries = []
    for loop in config.loops():
        say(f"===== loop seed {loop.loop_seed} of {config.loop_seeds}: {loop.run_dir}")
        summaries.append(Runner(loop, say=say, command=command).run())
    return write_loops_summary(config, summaries, command or repr(config), say)


def prepare(config: PipelineConfig):
    """The stages of ``config`` (of every loop) with their configs composed and written to
    ``RUN_DIR/[seed{k}/]<stage>/stage.yaml`` (nothing runs): :meth:`~.runner.Runner.prepare`."""
    from .runner import Runner

    return [stage for loop in config.loops() for stage in Runner(loop).prepare()]
