"""The config of every training stage, composed by Hydra exactly as ``fairseq-hydra-train`` composes it.

A stage's config is its recipe (``examples/<config dir>/<recipe>.yaml``, validated against
fairseq's ``FairseqConfig`` as ``fairseq-hydra-train`` does), composed by Hydra's compose API
with these overrides, in this order:

1. at ``--scale tiny``, the tiny update counts of the stage's kind (``++key=value``);
2. the run's overrides (``PipelineConfig.overrides``), in Hydra's grammar and with its meaning
   (``key=value``, ``+key=value``, ``++key=value``, ``~key``). ``pretrain:``, ``tokenizer:`` or
   ``finetune:`` in front restricts one to a kind of stage, ``budget_finetune:`` to the evaluation
   fine-tunings on a label budget (``--label-budgets N``). A plain ``key=value`` or ``~key``
   without that prefix goes to every stage whose recipe has the key (and is an error when no
   recipe has it); with the prefix, a missing key is Hydra's error. ``hydra.*`` overrides go to
   the stage's ``fairseq-hydra-train`` command line.

Then the stage's own settings are set (its paths, the checkpoint it reads, its seed, the
architecture of a random init (that of the pre-training recipe, or of the ``init_from`` checkpoint),
where it logs). A plain override of one of those keys leaves the
pipeline's value for that stage (``common.seed=7`` seeds the training stages, the evaluation
fine-tunings keep their seeds); one with a kind prefix is an error. The stage's ``stage.yaml`` is
the composed config with the recipe's ``hydra:`` block (its run folder, no chdir).
"""

import copy
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf, open_dict

from ..recipes import recipe_dir
from .config import TINY_UPDATES, TRAINING_KINDS, PipelineConfig, PipelineError
from .plan import RANDOM, Stage

# override prefixes that name a stage role narrower than its kind: role -> kind
ROLE_PREFIXES = {"budget_finetune": "finetune"}
PREFIXES = "pretrain:, tokenizer:, finetune: or budget_finetune:"
# the options that set some of the keys a stage owns
OPTIONS = {"dataset.train_subset": "--pretrain-split, --label-budgets", "common.seed": "--loop-seeds, --eval-seeds"}
_HYDRA = threading.Lock()  # Hydra's global state: one composition at a time


@dataclass
class StageOverride:
    item: str  # as given, prefix included
    kind: Optional[str]  # "pretrain", "tokenizer" or "finetune"; None: every kind
    role: Optional[str]  # "budget_finetune" (ROLE_PREFIXES); None: every stage of the kind
    text: str  # the Hydra override, prefix removed
    key: str
    anywhere: bool  # add, force-add: for every stage of the kind; change, delete: where the recipe has the key
    hydra: bool  # a hydra.* override: for the command line


def parse_overrides(items: List[str]) -> List[StageOverride]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for item in items:
        lead = item[: len(item) - len(item.lstrip("+~"))]
        head, sep, rest = item[len(lead):].partition(":")
        prefix = head if sep and (head in TRAINING_KINDS or head in ROLE_PREFIXES) else None
        kind = ROLE_PREFIXES.get(prefix, prefix)
        text = lead + rest if prefix else item
        try:
            parsed = parser.parse_override(text)
        except HydraException as exc:
            raise PipelineError(f"override {item!r}: {exc} (Hydra's override grammar, optionally after "
                                f"{PREFIXES})") from None
        if parsed.is_sweep_override():
            raise PipelineError(f"override {item!r}: a sweep; give one value per key")
        out.append(StageOverride(item, kind, prefix if prefix in ROLE_PREFIXES else None, text, parsed.key_or_group,
                                 parsed.is_add() or parsed.is_force_add(), parsed.is_hydra_override()))
    return out


def compose_recipe(config_dir: Path, name: str, overrides: List[str]) -> DictConfig:
    """Hydra's composition of ``config_dir/name.yaml`` with ``overrides``, as ``fairseq-hydra-train
    --config-dir config_dir --config-name name overrides...`` composes it (before resolving)."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir

    with _HYDRA, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recipes' "@package _group_" header and fairseq's schema matching
        hydra_init(name)
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
            return compose(config_name=name, overrides=overrides)


def tiny_settings(kind: str) -> Dict[str, int]:
    n = TINY_UPDATES[kind]
    if kind == "finetune":
        return {"optimization.max_update": n, "optimizer.groups.default.lr_scheduler.warmup_updates": n // 10,
                "common.log_interval": 10}
    # validate and save at half-way and at the end only (not after every epoch of the small corpus)
    return {"optimization.max_update": n, "lr_scheduler.warmup_updates": max(1, n // 10), "common.log_interval": 10,
            "checkpoint.save_interval_updates": n // 2, "dataset.validate_interval_updates": n // 2,
            "checkpoint.save_interval": 1000, "dataset.validate_interval": 1000}


def _has(cfg: DictConfig, key: str) -> bool:
    """``key`` is in ``cfg`` (its value not resolved: it may be a required ``${beats_required:...}``)."""
    return OmegaConf.select(cfg, key, default=_has, throw_on_resolution_failure=False) is not _has


class Composer:
    """Composes the training stages of one run (one Hydra composition per recipe and kind)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.overrides = parse_overrides(config.overrides)
        self.used = set()  # overrides that went to some stage
        self._composed: Dict[Tuple[str, str, str], Tuple[DictConfig, List[StageOverride]]] = {}
        self._architectures: Dict[Path, Dict[str, object]] = {}  # of the given checkpoints

    def recipe_path(self, stage: Stage) -> Path:
        folder = recipe_dir(stage.config_dir)
        path = folder / f"{self.config.recipe(stage.role)}.yaml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise PipelineError(f"stage {stage.name}: recipe {path} does not exist (available: {have}); "
                                f"choose one with --{stage.role.replace('_', '-')}-config NAME")
        return path

    def _recipe(self, stage: Stage, path: Path) -> Tuple[DictConfig, List[StageOverride]]:
        """The recipe with the tiny settings and the run's overrides, and the overrides it took."""
        cache = (str(path), stage.kind, stage.role, self.config.scale)
        if cache not in self._composed:
            settings = tiny_settings(stage.kind) if self.config.scale == "tiny" else {}
            first = [f"++{key}={value}" for key, value in settings.items()]
            mine = [o for o in self.overrides if self._reaches(o, stage) and not o.hydra]
            if any(o.kind is None and not o.anywhere for o in mine):
                base = self._compose(stage, path, first)
                mine = [o for o in mine if o.kind or o.anywhere or _has(base, o.key)]
            cfg = self._compose(stage, path, first + [o.text for o in mine])
            self._composed[cache] = cfg, mine
        return self._composed[cache]

    @staticmethod
    def _reaches(override: StageOverride, stage: Stage) -> bool:
        return override.kind in (None, stage.kind) and override.role in (None, stage.role)

    @staticmethod
    def _compose(stage: Stage, path: Path, overrides: List[str]) -> DictConfig:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return compose_recipe(path.parent, path.stem, overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            raise PipelineError(f"stage {stage.name} ({path}): {exc}".rstrip()) from None

    def owned(self, stage: Stage) -> Dict[str, object]:
        """The keys the pipeline sets for ``stage``, with their values."""
        values = dict(stage.settings)
        if stage.encoder == RANDOM:  # a random init gets the architecture of the pre-trained encoders
            values.update({f"model.{k}": v for k, v in self.architecture(stage.pretrain).items()})
        values["checkpoint.save_dir"] = str(stage.dir / "checkpoints")
        values["common.tensorboard_logdir"] = str(stage.tensorboard)  # the curves of the report
        values["common.log_format"] = "json"  # the progress lines
        return values

    def architecture(self, stage: Stage) -> Dict[str, object]:
        """The architecture fields of the encoder ``stage`` trains (its recipe's), or of the checkpoint
        it is given as (``init_from``: read once, with ``beats_fairseq.load``)."""
        from ..modules.backbone import ARCH_FIELDS

        if stage.given is None:
            model = self.compose(stage).model
            return {k: model[k] for k in ARCH_FIELDS if k in model}
        if stage.given not in self._architectures:
            from ..loading import read_starting_point

            try:
                start = read_starting_point(str(stage.given), ("pretraining", "encoder", "classifier"), "--init-from")
            except (OSError, RuntimeError, ValueError) as exc:
                raise PipelineError(f"stage {stage.name}: {exc}") from None
            self._architectures[stage.given] = start.architecture
        return self._architectures[stage.given]

    def compose(self, stage: Stage) -> DictConfig:
        """``stage.config`` (composed once), and ``stage.hydra_overrides`` for its command line."""
        if stage.config is None:
            path = self.recipe_path(stage)
            recipe, mine = self._recipe(stage, path)
            owned = self.owned(stage)
            for o in mine:
                clash = [k for k in owned if k == o.key or k.startswith(o.key + ".")]
                if clash and o.kind:
                    option = OPTIONS.get(clash[0])
                    raise PipelineError(f"override {o.item!r}: the pipeline sets {clash[0]} of stage {stage.name} "
                                        "itself; leave it out, or give it to another kind of stage"
                                        + (f" ({option} sets it)" if option else ""))
                if not clash:  # with a clash, a plain override leaves the pipeline's value
                    self.used.add(o.item)
            cfg = copy.deepcopy(recipe)
            for key, value in owned.items():
                OmegaConf.update(cfg, key, value, force_add=True)
            hydra = OmegaConf.load(path).get("hydra")  # the recipe's run folder and chdir; not composed
            if hydra is not None:
                with open_dict(cfg):
                    cfg.hydra = hydra
            stage.config = cfg
            launch = [o for o in self.overrides if o.hydra and self._reaches(o, stage)]
            stage.hydra_overrides = [o.text for o in launch]
            self.used.update(o.item for o in launch)
        return stage.config

    def compose_all(self, stages: List[Stage]) -> None:
        """Compose every training stage; an override that went to no stage is an error."""
        for stage in stages:
            if stage.training:
                self.compose(stage)
        unused = [o.item for o in self.overrides if o.item not in self.used]
        if unused:
            raise PipelineError(f"override(s) {unused} match no key of any stage's recipe, or their prefix no stage "
                                f"of this run (prefix with + to add a key, or with {PREFIXES} to name the stages)")

