"""Where a float32 forward departs from float64 on this device: primitives, then every module of a
2-layer BEATs encoder (forward hooks), each as max|fp32 - fp64| / max|fp64|.

    python benchmarks/fp32_gap.py [--device cuda] [--out FILE.json] [--batch 16] [--length 496]

Float32 rounding gives ~1e-7 per operation; TF32 (10-bit mantissa) gives ~1e-4 to 1e-3.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from beats_fairseq.modules.backbone import BeatsBackboneConfig  # noqa: E402
from beats_fairseq.modules.encoder import TransformerEncoder  # noqa: E402


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max())


def primitives(device, batch, length):
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(4096, 768, generator=g, dtype=torch.float64)
    b = torch.randn(768, 768, generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(max(batch // 4, 1), 12, length, 64, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.randn(max(batch // 4, 1), 12, length, length, generator=g, dtype=torch.float64)
    x = torch.randn(batch, length, 768, generator=g, dtype=torch.float64)
    n = 1 << (2 * length - 1).bit_length()
    ops = {
        "matmul": lambda a, b, **_: a @ b,
        "linear": lambda a, b, **_: F.linear(a, b),
        "bmm": lambda q, k, **_: q @ k.transpose(-1, -2),
        "softmax": lambda mask, **_: mask.softmax(-1),
        "layer_norm": lambda x, **_: F.layer_norm(x, (768,)),
        "gelu": lambda x, **_: F.gelu(x),
        "sdpa_math": lambda q, k, v, mask, **_: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "rfft_irfft": lambda x, **_: torch.fft.irfft(torch.fft.rfft(x.transpose(1, 2), n=n), n=n)[..., :length],
    }
    tensors = dict(a=a, b=b, q=q, k=k, v=v, mask=mask, x=x)
    out = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for name, op in ops.items():
        with sdpa_kernel([SDPBackend.MATH]):
            ref = op(**{n: t.to(device) for n, t in tensors.items()})
            got = op(**{n: t.float().to(device) for n, t in tensors.items()})
        out[name] = rel(got, ref)
    return out


def modules(device, batch, length):
    torch.manual_seed(0)
    cfg = BeatsBackboneConfig(encoder_layers=2, dropout=0.0, attention_dropout=0.0)
    enc32 = TransformerEncoder(cfg).to(device).eval()
    enc64 = copy.deepcopy(enc32).double()
    x = torch.randn(batch, length, 768, device=device)
    padding = torch.zeros(batch, length, dtype=torch.bool, device=device)
    captured = {}

    def hook(tag):
        def fn(module, inputs, output):
            if isinstance(output, tuple):
                output = output[0]
            if torch.is_tensor(output) and output.is_floating_point():
                captured.setdefault(tag, []).append(output.detach().clone())
        return fn

    for tag, model in (("32", enc32), ("64", enc64)):
        for name, m in model.named_modules():
            m.register_forward_hook(hook((tag, name)))
    with torch.no_grad():
        enc32(x, padding)
        enc64(x.double(), padding)
    report = {}
    for (tag, name), outs in captured.items():
        if tag == "32" and ("64", name) in captured:
            for i, (o32, o64) in enumerate(zip(outs, captured[("64", name)])):
                if o32.shape == o64.shape:
                    report[f"{name or '<encoder>'}#{i}"] = rel(o32, o64)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--batch", type=int, default=16, help="clips (the primitives' attention uses a quarter)")
    p.add_argument("--length", type=int, default=496, help="patches per clip (496: 10 s)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    flags = {"torch": torch.__version__, "float32_matmul_precision": torch.get_float32_matmul_precision(),
             "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
             "cuda_matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None)}
    report = {"device": str(device), "flags": flags, "primitives": primitives(device, args.batch, args.length),
              "modules": modules(device, args.batch, args.length)}
    for section in ("flags", "primitives", "modules"):
        print(f"== {section}")
        for k, v in report[section].items():
            print(f"  {k:50s} {v:.3g}" if isinstance(v, float) else f"  {k:50s} {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
