"""FLOPs of a training update or a forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``
with two corrections:

* **Grouped convolution backward.** torch's ``convolution_backward`` formula counts the weight
  gradient of a grouped convolution as if it were dense: ``groups`` times too much. For the
  BEATs positional convolution (16 groups) that is a 17x overcount of its backward (grad input
  1x + grad weight 16x the forward, instead of 1x + 1x). Here every ``convolution_backward`` is
  replaced by its analytic value: one forward's FLOPs for each gradient it computes (input,
  weight), which is exact for any groups/stride/padding. The value torch would have counted is
  kept beside it (``conv_backward_as_counted_by_torch``).
* **CPU attention.** The CPU flash-attention kernels of ``scaled_dot_product_attention``
  (``_scaled_dot_product_flash_attention_for_cpu`` and its backward) have no formula in torch
  and would count 0; they get torch's own SDPA formulas (those of the CUDA kernels).

FLOPs are 2 per multiply-accumulate of matrix products and convolutions (torch's convention);
element-wise work (softmax, norms, GELU, the optimizer) is not counted. ``flex_attention`` is not
counted by torch: measure FLOPs with ``attention_backend: sdpa`` (same maths).
"""

from collections import defaultdict

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_backward_flop,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


class CorrectedFlopCounter:
    """``with CorrectedFlopCounter() as flops: step()`` then ``flops.summary()``."""

    def __init__(self):
        self.conv_backward_true = 0
        self.conv_backward_torch = 0
        self._mode = FlopCounterMode(display=False, custom_mapping={
            aten.convolution_backward: self._conv_backward,
            aten._scaled_dot_product_flash_attention_for_cpu: self._cpu_sdpa,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: self._cpu_sdpa_backward,
        })

    def _conv_backward(self, grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                       output_padding, groups, output_mask, out_shape=None, **kwargs):
        # the forward that produced grad_out's shape from x (transposed: counted over x's positions)
        forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
        true = forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))
        self.conv_backward_true += true
        self.conv_backward_torch += conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding,
                                                       dilation, transposed, output_padding, groups, output_mask,
                                                       out_val=out_shape)  # torch's formula (shape-wrapped)
        return true

    @staticmethod
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @staticmethod
    def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def total(self) -> int:
        return self._mode.get_total_flops()

    def summary(self) -> dict:
        by_op = defaultdict(int)
        for op, value in self._mode.get_flop_counts().get("Global", {}).items():
            by_op[str(op).split(".")[-2] if str(op).count(".") >= 2 else str(op)] += value
        total = self.total()
        return {
            "gflop": total / 1e9,
            "gflop_by_op": {k: v / 1e9 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "conv_backward_gflop": self.conv_backward_true / 1e9,
            "conv_backward_as_counted_by_torch_gflop": self.conv_backward_torch / 1e9,
            "gflop_with_torch_conv_backward": (total - self.conv_backward_true + self.conv_backward_torch) / 1e9,
        }


def count_flops(fn) -> dict:
    """Run ``fn()`` once under the corrected counter and return its summary."""
    with CorrectedFlopCounter() as counter:
        fn()
    return counter.summary()
