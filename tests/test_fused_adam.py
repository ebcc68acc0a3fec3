"""``beats_adam`` (beats_fairseq/fused_adam.py): fairseq's ``adam`` update in torch's fused AdamW kernel.

Same update as fairseq's ``adam`` (to float rounding), same state layout (checkpoints move between
them), fairseq's loop for parameters that are not float32, and reachable from the recipes."""

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import beats_fairseq  # noqa: F401  (registers beats_adam)
from beats_fairseq.fused_adam import FusedStepAdam

fairseq_adam = pytest.importorskip("fairseq.optim.adam")

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(64, 32), (32,), (5,), (300, 7)]
HYPER = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)


def params(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in SHAPES]


def build(cls, tensors, **hyper):
    # two groups (the second without weight decay), as fine-tuning's biases and norms are
    return cls([{"params": tensors[:2]}, {"params": tensors[2:], "weight_decay": 0.0}], **{**HYPER, **hyper})


def train(optimizer, tensors, steps, grad_scale=1.0, frozen_until=10, start=0):
    """``steps`` updates with seeded gradients; the first tensor has none before update ``frozen_until``
    (a frozen layer) and the LR changes every update (a schedule)."""
    for k in range(start, start + steps):
        generator = torch.Generator().manual_seed(k)
        for i, tensor in enumerate(tensors):
            grad = torch.randn(tensor.shape, generator=generator) * grad_scale
            tensor.grad = None if i == 0 and k < frozen_until else grad.to(tensor.dtype)
        for group in optimizer.param_groups:
            group["lr"] = HYPER["lr"] * (k + 1) / 40
        optimizer.step()


def displacement_difference(a, b):
    """Largest difference between the total updates of ``a`` and ``b`` from their common start,
    relative to the largest update of ``b``, over the tensors."""
    start = params(b[0].dtype)
    return max(((x.double() - y.double()).abs().max() / (y.double() - s.double()).abs().max()).item()
               for x, y, s in zip(a, b, start))


@pytest.mark.parametrize("grad_scale", [1.0, 1e-7])  # 1e-7: sqrt(v) is below eps, where eps's place decides
def test_same_update_as_fairseq_adam(grad_scale):
    """As close to fairseq's adam in float64 as fairseq's adam in float32 is: the two differ by rounding."""
    exact = [torch.nn.Parameter(p.detach().double()) for p in params()]
    reference, fused = params(), params()
    exact_opt, reference_opt, fused_opt = (build(fairseq_adam.Adam, exact), build(fairseq_adam.Adam, reference),
                                           build(FusedStepAdam, fused))
    for optimizer, tensors in ((exact_opt, exact), (reference_opt, reference), (fused_opt, fused)):
        train(optimizer, tensors, 40, grad_scale)
    rounding = displacement_difference(reference, exact)
    assert rounding < 1e-2
    assert displacement_difference(fused, exact) < 3 * rounding
    steps = [fused_opt.state[p]["step"] for p in fused]
    assert steps == [reference_opt.state[p]["step"] for p in reference] == [30, 40, 40, 40]
    assert all(type(step) is int for step in steps)

    # torch's own fused AdamW puts eps elsewhere: with small gradients that is another update
    plain = params()
    train(torch.optim.AdamW([{"params": plain[:2]}, {"params": plain[2:], "weight_decay": 0.0}], fused=True,
                            **HYPER), plain, 40, grad_scale)
    if grad_scale < 1:
        assert displacement_difference(plain, exact) > 30 * rounding


def test_bfloat16_parameters_take_fairseq_adams_loop():
    reference, fused = params(torch.bfloat16), params(torch.bfloat16)
    reference_opt, fused_opt = build(fairseq_adam.Adam, reference), build(FusedStepAdam, fused)
    train(reference_opt, reference, 5)
    train(fused_opt, fused, 5)
    assert all(torch.equal(a, b) for a, b in zip(fused, reference))
    assert fused_opt.state[fused[1]]["exp_avg"].dtype == torch.float32


def test_state_moves_between_fairseq_adam_and_beats_adam():
    """A checkpoint written with either optimizer resumes with the other."""
    reference = params()
    reference_opt = build(fairseq_adam.Adam, reference)
    train(reference_opt, reference, 15)
    fused = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    fused_opt = build(FusedStepAdam, fused)
    fused_opt.load_state_dict(copy.deepcopy(reference_opt.state_dict()))
    train(reference_opt, reference, 10, start=15)
    train(fused_opt, fused, 10, start=15)
    assert displacement_difference(fused, reference) < 1e-3
    back_params = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    back = build(fairseq_adam.Adam, back_params)
    back.load_state_dict(copy.deepcopy(fused_opt.state_dict()))
    assert [back.state[p]["step"] for p in back_params] == [15, 25, 25, 25]  # the first one was frozen for 10


def test_the_recipes_build_beats_adam_inside_the_composite_optimizer():
    from fairseq.optim import build_optimizer

    from beats_fairseq.fused_adam import BeatsAdam

    recipe = OmegaConf.load(REPO / "examples" / "beats_finetune" / "as20k.yaml")
    assert recipe.optimizer.groups.default.optimizer._name == "beats_adam"
    root = OmegaConf.create({"common": {"tpu": False}, "optimization": {"lr": [1e-3], "max_update": 100},
                             "optimizer": OmegaConf.to_container(recipe.optimizer)})
    layer = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(root.optimizer, list(layer.parameters()))
    inner = list(optimizer.optimizers.values())
    assert inner and all(isinstance(o, BeatsAdam) and isinstance(o.optimizer, FusedStepAdam) for o in inner)
    optimizer.lr_scheduler.step_update(50)  # past the warm-up: a non-zero LR
    layer(torch.randn(2, 4)).sum().backward()
    before = layer.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(layer.weight, before)

    pretrain = OmegaConf.load(REPO / "examples" / "beats_iter1" / "pretrain_as2m.yaml")
    cfg = OmegaConf.merge(OmegaConf.to_container(pretrain.optimizer), {"lr": [1e-3], "tpu": False})
    assert isinstance(build_optimizer(cfg, list(layer.parameters())), BeatsAdam)


def test_options_beats_adam_does_not_implement_are_errors():
    from fairseq.optim import build_optimizer

    cfg = OmegaConf.create({"_name": "beats_adam", "lr": [1e-3], "tpu": False, "fp16_adam_stats": True})
    with pytest.raises(ValueError, match="beats_adam does not take fp16_adam_stats=true"):
        build_optimizer(cfg, list(torch.nn.Linear(2, 2).parameters()))
