"""``beats_adam``: fairseq's ``adam`` update, computed by torch's fused AdamW kernel.

fairseq's ``adam`` (without apex) updates one tensor at a time with seven separate tensor
operations; on a BEATs-base fine-tuning step on CPU that is about 0.1 s, and on a GPU a few
hundred kernel launches per group. ``beats_adam`` takes the same config, applies the same
update and keeps the same optimizer state (``step`` as an int, ``exp_avg``, ``exp_avg_sq`` in
float32), so a checkpoint written with either resumes with the other.

The update of fairseq's ``adam`` (decoupled weight decay, as AdamW), at step ``t``::

    p <- p - lr * wd * p
    p <- p - lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps)

torch's fused AdamW divides ``sqrt(v)`` by ``sqrt(1 - b2**t)`` before adding ``eps``. Passing
it ``eps / sqrt(1 - b2**t)`` gives the update above exactly (up to float rounding), so the
tensors are bucketed by their step count: a tensor that had no gradient on some updates (a
frozen layer) keeps its own count, as in fairseq's ``adam``.

A step on parameters that are not float32 (fairseq's memory-efficient fp16/bf16 training)
runs fairseq's own loop, which keeps float32 state for them.
"""

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from fairseq.optim import register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
from fairseq.optim.fairseq_optimizer import FairseqOptimizer


@dataclass
class BeatsAdamConfig(FairseqAdamConfig):
    pass


def fusable(param: torch.Tensor) -> bool:
    """Whether the fused kernel updates ``param`` as fairseq's ``adam`` would: a dense float32
    tensor on a CPU or CUDA device."""
    grad = param.grad
    return (
        param.dtype == torch.float32
        and grad.dtype == torch.float32
        and not grad.is_sparse
        and param.device.type in ("cpu", "cuda")
    )


class FusedStepAdam(Adam):
    """fairseq's ``Adam`` whose step runs torch's fused AdamW kernel (see the module docstring)."""

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(group.get("amsgrad", False) for group in self.param_groups) or not all(map(fusable, with_grad)):
            super().step()
            return loss
        with torch.no_grad():
            for group in self.param_groups:
                self._fused_group_step(group)
        return loss

    def _fused_group_step(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        buckets = defaultdict(lambda: ([], [], [], []))  # (device, step) -> params, grads, exp_avgs, exp_avg_sqs
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            else:
                state["exp_avg"] = state["exp_avg"].to(param)
                state["exp_avg_sq"] = state["exp_avg_sq"].to(param)
            state["step"] += 1
            bucket = buckets[(param.device, state["step"])]
            for values, tensor in zip(bucket, (param, param.grad, state["exp_avg"], state["exp_avg_sq"])):
                values.append(tensor)
        for (device, step), (params, grads, exp_avgs, exp_avg_sqs) in buckets.items():
            # the kernel reads the step count after its increment: one scalar per tensor
            steps = list(torch.full((len(params),), float(step), device=device).unbind())
            torch._fused_adamw_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"] / math.sqrt(1 - beta2**step),
                maximize=False,
            )


@register_optimizer("beats_adam", dataclass=BeatsAdamConfig)
class BeatsAdam(FairseqAdam):
    """fairseq's ``adam`` (same config and state) with the fused step of :class:`FusedStepAdam`."""

    def __init__(self, cfg: BeatsAdamConfig, params):
        FairseqOptimizer.__init__(self, cfg)
        for key in ("use_old_adam", "fp16_adam_stats"):
            if getattr(cfg, key, False):
                raise ValueError(
                    f"optimizer beats_adam does not take {key}=true: use optimizer _name=adam for it"
                )
        self._optimizer = FusedStepAdam(params, **self.optimizer_config)
