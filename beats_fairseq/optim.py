"""``beats_composite``: fairseq's ``composite`` optimizer with per-parameter weight-decay scales.

Fine-tuning gives every parameter ``p.optim_overrides = {"optimizer": {"lr_scale": s,
"weight_decay_scale": w}}`` (layer-wise LR decay; no weight decay on biases and norms) and
uses ``composite`` with ``dynamic_groups: true``: one optimizer and LR schedule per distinct
override. fairseq's ``composite`` applies ``lr_scale`` but never ``weight_decay_scale`` (its
check looks for a key that no optimizer config has), so this optimizer applies it after the
groups are built, to the group's torch param groups and to its logged config. It also gives
every instance its own group dicts (fairseq's are class attributes shared by all instances)
and stops with a clear error on a cosine schedule whose warm-up is as long as the run.
Everything else, configs included, is fairseq's ``composite``.
"""

import logging
from dataclasses import dataclass

from fairseq.optim import register_optimizer
from fairseq.optim.composite import CompositeOptimizerConfig, FairseqCompositeOptimizer
from omegaconf import open_dict

logger = logging.getLogger(__name__)


@dataclass
class BeatsCompositeOptimizerConfig(CompositeOptimizerConfig):
    pass


def weight_decay_scale(param) -> float:
    overrides = getattr(param, "optim_overrides", None) or {}
    return float((overrides.get("optimizer") or {}).get("weight_decay_scale", 1.0))


def check_schedules(cfg) -> None:
    """Fail fast on a group schedule fairseq would crash on later: cosine with ``warmup_updates
    == max_update`` (and no ``lr_period_updates``) divides by a zero-length period at the last
    update. (A warm-up longer than the run never reaches the cosine part: allowed.)"""
    for name, group in (cfg.groups or {}).items():
        schedule = group.get("lr_scheduler")
        if not schedule or schedule.get("_name") != "cosine":
            continue
        warmup, total = schedule.get("warmup_updates", 0), schedule.get("max_update", 0)
        if total and warmup == total and schedule.get("lr_period_updates", -1) <= 0:
            raise ValueError(
                f"optimizer.groups.{name}.lr_scheduler.warmup_updates={warmup} equals its max_update={total} "
                "(optimization.max_update): the cosine schedule needs updates after the warm-up; lower "
                f"optimizer.groups.{name}.lr_scheduler.warmup_updates or raise optimization.max_update"
            )


@register_optimizer("beats_composite", dataclass=BeatsCompositeOptimizerConfig)
class BeatsCompositeOptimizer(FairseqCompositeOptimizer):
    def __init__(self, cfg: BeatsCompositeOptimizerConfig, params):
        check_schedules(cfg)
        params = list(params)
        if len(params) == 1 and not hasattr(params[0], "optim_overrides"):
            raise ValueError(
                "optimizer beats_composite got one flattened parameter: fairseq's fp16 training flattened the "
                "per-layer parameter groups; set common.fp16_no_flatten_grads=true (the beats_finetune recipes do)"
            )
        self.optimizers, self.lr_schedulers, self.lr_scheduler = {}, {}, None
        super().__init__(cfg, params)
        for group, optimizer in self.optimizers.items():
            scales = {weight_decay_scale(p) for p in optimizer.params}
            if len(scales) != 1:
                raise ValueError(f"optimizer group {group} mixes weight_decay_scale values {sorted(scales)}")
            scale = scales.pop()
            if scale == 1.0:
                continue
            for param_group in optimizer.param_groups:
                param_group["weight_decay"] = param_group.get("weight_decay", 0.0) * scale
            config = self.optimizers_config[group]
            if "weight_decay" in config:
                with open_dict(config):
                    config.weight_decay = config.weight_decay * scale
            logger.info("group %s: weight decay x %g (%d tensors)", group, scale, len(list(optimizer.params)))
