"""The iter1 acoustic tokenizer: a frozen random projection and a frozen random codebook.

Paper section 3.2.1: label = argmin_i ||v_i - W x||^2 over 16x16 fbank patches x. The
paper leaves initialisation and normalisation open; this project's choice (BEST-RQ
style):

* x: the 256 values of a patch of the normalised fbank (the same fbank the encoder
  sees), flattened time-major, then standardised per patch (zero mean, unit variance,
  eps 1e-5) so that labels describe spectral shape rather than loudness alone;
* W: ``(256, codebook_dim)`` with entries ~ N(0, 1/256) (Xavier-like);
* V: ``(codebook_size, codebook_dim)`` ~ N(0, 1), each row l2-normalised;
* label = argmin over codes of ||v_i - Wx / ||Wx|| ||^2, i.e. the code of largest
  cosine similarity with the projection.

W and V are drawn from ``torch.Generator().manual_seed(seed)`` and stored as buffers,
so they travel in every checkpoint and labels are reproducible anywhere. They stay float32
when the model is cast (:class:`~beats_fairseq.modules.buffers.Float32Buffers`).
"""

import torch
import torch.nn.functional as F

from ..modules.buffers import Float32Buffers
from ..modules.fbank import compute_fbank, patchify


class RandomProjectionTokenizer(Float32Buffers):
    def __init__(self, codebook_size: int = 1024, codebook_dim: int = 256, patch_size: int = 16, seed: int = 1337):
        super().__init__()
        self.patch_size = patch_size
        generator = torch.Generator().manual_seed(seed)
        patch_dim = patch_size * patch_size
        projection = torch.randn(patch_dim, codebook_dim, generator=generator) / patch_dim**0.5
        codebook = F.normalize(torch.randn(codebook_size, codebook_dim, generator=generator), dim=-1)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.long))
        self.requires_grad_(False)

    @property
    def codebook_size(self) -> int:
        return self.codebook.size(0)

    @torch.no_grad()
    def labels_from_fbank(self, fbank: torch.Tensor) -> torch.Tensor:
        """Normalised fbank ``(B, T, F)`` -> labels ``(B, N)`` in the encoder's patch order."""
        with torch.autocast(device_type=fbank.device.type, enabled=False):
            patches = patchify(fbank.float(), self.patch_size)
            patches = (patches - patches.mean(-1, keepdim=True)) / (patches.std(-1, keepdim=True) + 1e-5)
            projected = F.normalize(patches @ self.projection.float(), dim=-1)
            return (projected @ self.codebook.float().t()).argmax(dim=-1)

    @torch.no_grad()
    def extract_labels(self, source: torch.Tensor, padding_mask=None, fbank_mean=None, fbank_std=None) -> torch.Tensor:
        """Waveforms ``(B, L)`` -> labels ``(B, N)``; padded patches get labels too (official rule)."""
        kwargs = {k: v for k, v in (("fbank_mean", fbank_mean), ("fbank_std", fbank_std)) if v is not None}
        return self.labels_from_fbank(compute_fbank(source, **kwargs))
