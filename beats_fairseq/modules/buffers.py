"""Float32 buffers that survive dtype casts of the model."""

import torch
import torch.nn as nn


class Float32Buffers(nn.Module):
    """A module whose float32 buffers (its own and its submodules') stay float32.

    Device moves apply as usual; dtype casts (``.half()``, ``.bfloat16()``, fairseq's
    ``common.bf16``/``fp16``) leave them untouched: they are restored from the tensors held
    before the cast, so without rounding. Used for codebooks and random projections, whose
    labels under mixed precision must equal the float32 ones.
    """

    def _apply(self, fn, *args, **kwargs):
        keep = {(module, name): buf for module in self.modules() for name, buf in module._buffers.items()
                if buf is not None and buf.dtype == torch.float32}
        super()._apply(fn, *args, **kwargs)
        for (module, name), old in keep.items():
            new = module._buffers[name]
            if new is not None and new.dtype != torch.float32:
                module._buffers[name] = old.to(device=new.device)
        return self
