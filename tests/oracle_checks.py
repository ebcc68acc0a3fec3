"""Comparisons with the official BEATs outputs (the oracle folder), shared by ``tests/test_parity.py``
and ``benchmarks/gpu_check.py`` (which runs them on CUDA, with the oracle folder as an argument).

Each check returns the worst ``|ours - official| / (atol + rtol * |official|)`` over the compared
tensors: at most 1 means within the tolerance of the parity tests.
"""

from pathlib import Path

import torch

from beats_fairseq.modules.backbone import BACKBONE_FIELDS, BeatsBackbone, BeatsBackboneConfig

# Float32 on a CPU, the figures the README quotes (measured: fbank 1.8e-5, features and every
# intermediate at most 9.5e-6, fine-tuned probabilities 1.2e-7).
FBANK_ATOL = 3e-5
PARITY_TOL = dict(atol=1e-5, rtol=1e-5)
PROBABILITY_ATOL = 1e-6
# Other devices (benchmarks/gpu_check.py on CUDA): the oracle README's suggested float32 tolerance.
FEATURE_TOL = dict(atol=1e-4, rtol=1e-4)
GRADIENT_RTOL = 1e-4  # atol: 1e-4 x the largest official gradient of each tensor


def oracle_loader(directory):
    """``load('inputs')`` -> the dict stored in ``directory/inputs.pt``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"oracle folder {directory} not found (it holds inputs.pt, beats_small.pt, ...)")

    def load(name):
        return torch.load(directory / f"{name}.pt", weights_only=True)

    load.dir = directory
    return load


def build_backbone(ck):
    cfg = BeatsBackboneConfig(**{k: v for k, v in ck["cfg"].items() if k in BACKBONE_FIELDS})
    model = BeatsBackbone(cfg)
    model.load_state_dict({k: v for k, v in ck["model"].items() if not k.startswith("predictor")})
    return model.eval()


def tolerance_ratio(ours, ref, atol, rtol) -> float:
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    return float(((ours - ref).abs() / (atol + rtol * ref.abs())).max())


def feature_check(load, device="cpu") -> dict:
    """Features of the official small model with and without the padding mask, on ``device`` in fp32."""
    inputs, ref = load("inputs"), load("model_outputs")
    model = build_backbone(load("beats_small")).to(device)
    source, padding = inputs["source"].to(device), inputs["padding_mask"].to(device)
    with torch.no_grad():
        feats, mask = model.extract_features(source, padding)
        plain, _ = model.extract_features(source)
    return {
        "features": tolerance_ratio(feats, ref["features"], **FEATURE_TOL),
        "features_no_mask": tolerance_ratio(plain, ref["features_no_mask"], **FEATURE_TOL),
        "padding_mask_exact": bool(torch.equal(mask.cpu(), ref["padding_mask"])),
        "max_abs_error": float((feats.cpu() - ref["features"]).abs().max()),
    }


def gradient_check(load, device="cpu") -> dict:
    """Loss and parameter gradients (layer-wise gradient decay of the oracle's model) on ``device``."""
    inputs, ref = load("inputs"), load("model_outputs")["grad_check"]
    model = build_backbone(load("beats_small")).to(device)
    feats, _ = model.extract_features(inputs["source"].to(device), inputs["padding_mask"].to(device))
    loss = (feats * ref["proj"].to(device)).sum()
    loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    worst = max(tolerance_ratio(params[name].grad, grad, GRADIENT_RTOL * grad.abs().max().item(), GRADIENT_RTOL)
                for name, grad in ref["grads"].items())
    return {"loss": tolerance_ratio(loss, ref["loss"], 1e-3, 1e-4), "gradients": worst,
            "parameters_compared": len(ref["grads"])}
