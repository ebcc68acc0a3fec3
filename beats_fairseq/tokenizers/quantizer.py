"""``NormEMAVectorQuantizer``: the BEATs tokenizer's cosine codebook with EMA updates.

Official layout and maths (paper section 3.2.2, official ``quantizer.py``):

* inputs ``z`` and the ``n_embed x dim`` codes are l2-normalised; the code of a vector is
  the nearest one in squared Euclidean distance (= largest cosine);
* straight-through output ``z + sg(e - z)`` and the commitment loss
  ``beta * mse(sg(e), z)`` (mean over vectors *and* dimensions, i.e. ``||sg(e) - z||^2 / dim``);
* cosine k-means initialisation (10 iterations) on the first training batch;
* state-dict keys ``embedding.weight``, ``embedding.cluster_size``, ``embedding.embed_avg``,
  ``embedding.initted`` and ``cluster_size``, so official tokenizer checkpoints load strictly.

Differences from the official code, all deliberate:

* the codebook and its statistics are **float32 buffers** (officially frozen ``nn.Parameter``):
  no optimizer or DDP parameter logic touches them, ``.half()``/``.bfloat16()`` of the model
  (fairseq ``fp16``/``bf16``) leaves them in float32, and distances and updates run in float32
  with autocast disabled;
* **eval mode never mutates a buffer** (the official quantizer updates ``cluster_size`` on
  every call, even in eval mode, so inference changed the state dict); an uninitialised
  codebook in eval mode is an error instead of a silent k-means run;
* EMA rule: ``embedding.cluster_size`` and ``embedding.embed_avg`` are EMAs (decay 0.99) of the
  per-code counts and sums of the assigned normalised inputs, and each used code is set to
  ``l2norm(embed_avg)`` (the count only rescales, the direction is the EMA mean). The official
  rule ``weight = l2norm(0.99 * weight + 0.01 * l2norm(batch mean))`` weighs every batch the same
  whatever the number of assigned vectors; the sum rule weighs them by count (VQ-VAE-2 style);
* ``cluster_size`` (code usage EMA) is seeded with the k-means cluster sizes and only changes in
  training;
* padded positions (``valid`` mask) are excluded from k-means, the EMA and the loss;
* with ``torch.distributed`` initialised *at call time*, counts and sums are all-reduced and the
  k-means result and re-seeded codes are broadcast from rank 0, so every worker holds the same
  codebook (officially the k-means init differed per rank);
* dead codes: every ``dead_code_interval`` training updates, codes assigned to no input (on any
  worker) during the last ``dead_code_interval`` updates, or whose usage EMA is below
  ``dead_code_threshold`` times the mean usage, are re-seeded with random valid inputs of the
  current batch (rank 0's, broadcast); ``dead_code_threshold = 0`` disables re-seeding. Not in
  the official code.
"""

import logging
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..modules.buffers import Float32Buffers

logger = logging.getLogger(__name__)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=-1)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist_ready():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _dist_ready():
        dist.broadcast(t, src=0)
    return t


def _rank() -> int:
    return dist.get_rank() if _dist_ready() else 0


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return nullcontext()


def code_sums(data: torch.Tensor, codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Per-code sum of the rows of ``data (M, d)`` (``scatter_add_``: ``index_add_`` is slow on CPU)."""
    out = torch.zeros(num_codes, data.size(1), device=data.device, dtype=data.dtype)
    return out.scatter_add_(0, codes.unsqueeze(-1).expand_as(data), data)


def sample_rows(x: torch.Tensor, num: int, generator=None) -> torch.Tensor:
    """``num`` random rows of ``x`` (without replacement when possible)."""
    if x.size(0) >= num:
        idx = torch.randperm(x.size(0), device=x.device, generator=generator)[:num]
    else:
        idx = torch.randint(0, x.size(0), (num,), device=x.device, generator=generator)
    return x[idx]


def cosine_kmeans(data: torch.Tensor, num_clusters: int, iters: int = 10):
    """Spherical k-means of l2-normalised ``data (M, d)``: (centroids ``(K, d)``, sizes ``(K,)``).

    Centroids start at random data rows; each iteration assigns every row to the centroid of
    largest cosine and re-centres on the normalised member sum; empty clusters keep their vector.
    """
    means = sample_rows(data, num_clusters).clone()
    sizes = torch.zeros(num_clusters, device=data.device, dtype=data.dtype)
    for _ in range(iters):
        assign = (data @ means.t()).argmax(dim=-1)
        sizes = torch.bincount(assign, minlength=num_clusters).to(data.dtype)
        sums = code_sums(data, assign, num_clusters)
        means = torch.where((sizes > 0).unsqueeze(-1), l2norm(sums), means)
    return means, sizes


class EmbeddingEMA(nn.Module):
    """Codebook buffers; names equal the official ``quantize.embedding.*`` keys."""

    def __init__(self, num_tokens: int, dim: int, kmeans_init: bool):
        super().__init__()
        weight = torch.zeros(num_tokens, dim) if kmeans_init else l2norm(torch.randn(num_tokens, dim))
        self.register_buffer("weight", weight)
        self.register_buffer("cluster_size", torch.zeros(num_tokens))
        self.register_buffer("embed_avg", weight.clone())
        self.register_buffer("initted", torch.tensor([0.0 if kmeans_init else 1.0]))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.weight)


class NormEMAVectorQuantizer(Float32Buffers):
    """Cosine vector quantizer with an EMA codebook (see the module docstring)."""

    def __init__(self, n_embed: int = 1024, embedding_dim: int = 256, beta: float = 1.0, decay: float = 0.99,
                 eps: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0, dead_code_interval: int = 100):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"quantizer decay must be in [0, 1), got {decay}")
        self.num_tokens = n_embed
        self.codebook_dim = embedding_dim
        self.beta = beta
        self.decay = decay
        self.eps = eps
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.dead_code_interval = max(1, int(dead_code_interval))
        self.embedding = EmbeddingEMA(n_embed, embedding_dim, kmeans_init)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        # Monitoring only (not in checkpoints): training updates done, and the update at which
        # each code was last assigned, for "share of codes used over the last N updates".
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("last_used", torch.full((n_embed,), -(2**62), dtype=torch.long))
        # Update count at which this process started tracking usage (-1: not yet).
        self.register_buffer("tracking_from", torch.full((), -1, dtype=torch.long))

    def set_num_updates(self, num_updates: int) -> None:
        """Follow the trainer's update count (fairseq calls this every update and after loading a
        checkpoint), so dead-code re-seeding happens at the same updates in a resumed run."""
        self.num_updates.fill_(int(num_updates))

    @property
    def initialised(self) -> bool:
        return bool(self.embedding.initted.item() > 0)

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor, valid: torch.Tensor = None):
        """z ``(..., dim)`` -> (z_q straight-through ``(..., dim)``, commitment loss, codes ``(...)``, stats).

        ``valid`` (bool, shape ``z.shape[:-1]``) marks the positions that count for the loss,
        k-means and the EMA (all by default); codes are returned for every position. The
        loss is ``beta * mean over valid vectors of ||sg(e) - l2norm(z)||^2 / dim``. ``stats``
        holds float32 tensors: ``counts`` (per code, valid positions of this batch; training: summed
        over all workers, eval: this worker only), ``perplexity``
        and ``usage`` (share of codes used in the last ``dead_code_interval`` training updates, the
        codes dead-code re-seeding leaves alone; in eval mode: share used in this batch).
        """
        if z.size(-1) != self.codebook_dim:
            raise ValueError(f"quantizer expects inputs of size {self.codebook_dim}, got {tuple(z.shape)}")
        shape = z.shape[:-1]
        with _no_autocast(z.device):
            zn = l2norm(z.float())
            flat = zn.reshape(-1, self.codebook_dim)
            mask = torch.ones(flat.size(0), dtype=torch.bool, device=z.device) if valid is None else valid.reshape(-1)
            if not self.initialised:
                if not self.training:
                    raise RuntimeError(
                        "the tokenizer codebook is not initialised (quantize.embedding.initted = 0): "
                        "train the tokenizer first (k-means runs on the first training batch) or load a trained one"
                    )
                self.kmeans_init_(flat[mask].detach())
            codes = self.assign(flat)
            z_q = self.embedding(codes)
            counts = torch.bincount(codes[mask], minlength=self.num_tokens).float()
            if self.training:
                with torch.no_grad():
                    counts = self.ema_update_(flat[mask].detach(), codes[mask], counts)
            diff = (z_q.detach() - flat).pow(2).mean(dim=-1)
            maskf = mask.float()
            loss = self.beta * (diff * maskf).sum() / maskf.sum().clamp(min=1.0)
            out = flat + (z_q - flat).detach()
        stats = self.statistics(counts)
        return out.view(*shape, self.codebook_dim).to(z.dtype), loss, codes.view(shape), stats

    @torch.no_grad()
    def assign(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance, official formula)."""
        weight = self.embedding.weight.float()
        dist_ = flat.pow(2).sum(-1, keepdim=True) + weight.pow(2).sum(-1) - 2.0 * flat @ weight.t()
        return dist_.argmin(dim=-1)

    def statistics(self, counts: torch.Tensor) -> dict:
        probs = counts / counts.sum().clamp(min=1.0)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        if self.training:
            recent = self.last_used > self.num_updates - self.dead_code_interval
            usage = recent.float().mean()
        else:
            usage = (counts > 0).float().mean()
        return {"counts": counts, "perplexity": perplexity, "usage": usage}

    # ------------------------------------------------------------------ training-time updates
    @torch.no_grad()
    def kmeans_init_(self, data: torch.Tensor) -> None:
        """Cosine k-means on rank 0's batch, broadcast to every worker."""
        emb = self.embedding
        if _rank() == 0:
            if data.size(0) == 0:
                raise RuntimeError("k-means initialisation of the codebook got no valid (unpadded) vectors")
            means, sizes = cosine_kmeans(data, self.num_tokens, self.kmeans_iters)
            logger.info("codebook k-means initialised on %d vectors: %d of %d codes non-empty",
                        data.size(0), int((sizes > 0).sum()), self.num_tokens)
            sizes = sizes * (dist.get_world_size() if _dist_ready() else 1)  # as if counted on all workers
            emb.weight.copy_(means)
            emb.cluster_size.copy_(sizes)
            emb.embed_avg.copy_(means * sizes.clamp(min=1.0).unsqueeze(-1))
            self.cluster_size.copy_(sizes)
        for buf in (emb.weight, emb.cluster_size, emb.embed_avg, self.cluster_size):
            _broadcast(buf)
        emb.initted.fill_(1.0)

    @torch.no_grad()
    def ema_update_(self, data: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """EMA of counts and sums (all workers), renormalised codes; returns the global counts."""
        emb, d = self.embedding, self.decay
        sums = code_sums(data, codes, self.num_tokens)
        _all_reduce(counts)
        _all_reduce(sums)
        if counts.sum() == 0:  # nothing valid on any worker: no update at all
            return counts
        self.cluster_size.mul_(d).add_(counts, alpha=1.0 - d)
        emb.cluster_size.mul_(d).add_(counts, alpha=1.0 - d)
        emb.embed_avg.mul_(d).add_(sums, alpha=1.0 - d)
        norm = emb.embed_avg.norm(dim=-1, keepdim=True)
        update = (counts > 0).unsqueeze(-1) & (norm > self.eps)
        emb.weight.copy_(torch.where(update, emb.embed_avg / norm.clamp(min=self.eps), emb.weight))
        if int(self.tracking_from) < 0:
            self.tracking_from.fill_(int(self.num_updates))
        self.num_updates += 1
        step = int(self.num_updates)
        self.last_used.masked_fill_(counts > 0, step)
        interval = self.dead_code_interval
        if self.dead_code_threshold > 0 and step % interval == 0 and step - int(self.tracking_from) >= interval:
            self.reseed_dead_codes_(data)
        return counts

    @torch.no_grad()
    def reseed_dead_codes_(self, data: torch.Tensor) -> int:
        """Replace codes unused for ``dead_code_interval`` updates or with usage EMA below
        ``dead_code_threshold`` x mean usage by random inputs (rank 0's)."""
        usage = self.cluster_size
        unused = self.last_used <= self.num_updates - self.dead_code_interval
        dead = (unused | (usage < self.dead_code_threshold * usage.mean())).float()
        _broadcast(dead)
        dead = dead.bool()
        num = int(dead.sum())
        if num == 0:
            return 0
        new = torch.zeros(num, self.codebook_dim, device=usage.device)
        if _rank() == 0 and data.size(0) > 0:
            new = sample_rows(data, num)
        _broadcast(new)
        if not bool((new.norm(dim=-1) > 0).all()):
            return 0  # rank 0 had no valid input this batch; try again next interval
        emb = self.embedding
        level = usage.mean()
        emb.weight[dead] = new
        emb.embed_avg[dead] = new * emb.cluster_size.mean().clamp(min=1.0)
        emb.cluster_size[dead] = emb.cluster_size.mean()
        self.cluster_size[dead] = level
        self.last_used[dead] = self.num_updates
        logger.info("re-seeded %d dead codes (unused for %d updates or usage EMA < %.3g x mean usage %.3g)", num,
                    self.dead_code_interval, self.dead_code_threshold, float(level))
        return num
