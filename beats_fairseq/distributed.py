"""Multi-process training helpers: CPU DDP, cross-rank flags, non-finite loss guard.

fairseq (``torch.distributed`` + DDP) is the engine; this module only fills its gaps:

* CPU DDP: replacements for two CUDA-only spots of fairseq, so that multi-process training also
  runs on CPUs (gloo), with no change on GPUs (installed by ``beats_fairseq/fairseq_patches.py``):

  - :func:`cpu_aware_ddp`: fairseq wraps the model in ``DistributedDataParallel(device_ids=[device_id])``,
    which torch refuses for a CPU module; a CPU module is wrapped without
    ``device_ids``/``output_device`` (what torch requires for CPU);
  - :func:`gloo_aware_all_gather_list`: ``distributed_utils.all_gather_list`` (used to gather
    validation outputs that cannot be summed, e.g. the predictions behind mAP) allocates CUDA
    buffers; with the gloo backend it uses ``torch.distributed.all_gather_object``.

  So ``common.cpu=true`` with ``distributed_backend=gloo`` trains with ``ddp_backend=pytorch_ddp``
  (tests, debugging without GPUs).
* :func:`max_over_ranks` and :func:`any_rank`: the largest value / logical OR of a per-rank value
  over all ranks (one scalar all-reduce).
* :func:`trusted_broadcast_object_slow`: a multi-process run resumes on torch 2.6 and later (the
  other ranks unpickle the training state rank 0 broadcasts in full).
* :class:`NonFiniteGuard`: what the tasks do on a non-finite loss (``task.nonfinite_loss``):
  ``fail`` raises ``FloatingPointError`` naming the batch's files; ``skip`` gives the batch a
  zero loss (zero gradients on every parameter, so DDP's all-reduce still happens), drops it
  from the logged metrics, and skips the optimizer step of the whole update on every rank,
  restoring the model's buffers (e.g. the tokenizer's EMA codebook, which the forward pass
  already moved) to their state before the update. More than ``max_skips`` consecutive
  skipped updates stop the run.
"""

import logging
from typing import List, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("fail", "skip")


# --------------------------------------------------------------------------- CPU DDP
def cpu_aware_ddp(base):
    """A subclass of the DDP class ``base`` that drops ``device_ids``/``output_device`` for a CPU module."""

    class CpuAwareDistributedDataParallel(base):
        def __init__(self, module, device_ids=None, output_device=None, **kwargs):
            if all(p.device.type == "cpu" for p in module.parameters()):
                device_ids, output_device = None, None
            super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)

    return CpuAwareDistributedDataParallel


def gloo_aware_all_gather_list(original):
    """fairseq's ``all_gather_list`` (``original``), through ``all_gather_object`` on a gloo group."""

    def all_gather_list(data, group=None, max_size=16384):
        if dist.is_initialized() and dist.get_backend(group) == "gloo":
            from fairseq.distributed import utils as fairseq_dist

            group = fairseq_dist.get_global_group() if group is None else group
            out = [None] * dist.get_world_size(group)
            dist.all_gather_object(out, data, group=group)
            return out
        return original(data, group=group, max_size=max_size)

    return all_gather_list


# --------------------------------------------------------------------------- collectives
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def max_over_ranks(value: int, device=None) -> int:
    """The largest ``value`` of all ranks (one scalar all-reduce; none in a single process)."""
    if world_size() == 1:
        return int(value)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, device=None) -> bool:
    """True if ``flag`` is True on any rank (no communication in a single process)."""
    return max_over_ranks(int(bool(flag)), device) > 0


# --------------------------------------------------------------------------- non-finite loss
def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 whose backward gives every trainable parameter a zero gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return torch.stack([p.reshape(-1)[0].float() for p in params]).sum() * 0.0


def zeroed(logging_output: dict) -> dict:
    """The same keys with zero values (tensors: zeros of the same shape); strings kept."""
    out = {}
    for k, v in logging_output.items():
        if torch.is_tensor(v):
            out[k] = torch.zeros_like(v)
        elif isinstance(v, (bool, int, float)):
            out[k] = type(v)(0)
        else:
            out[k] = v
    return out


def format_files(paths: List[str], limit: int = 16) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


class NonFiniteGuard:
    """State of the non-finite loss policy for one task (see the module docstring)."""

    def __init__(self, policy: str = "fail", max_skips: int = 100):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite_loss must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy = policy
        self.max_skips = int(max_skips)
        self.update_num: Optional[int] = None
        self.bad_in_update = False
        self.snapshot = None
        self.consecutive = 0
        self.total_skipped = 0

    def begin(self, model: torch.nn.Module, update_num: int) -> None:
        """Called before each forward of a training micro-batch."""
        if update_num == self.update_num:
            return
        self.update_num = update_num
        self.bad_in_update = False
        if self.policy == "skip":
            self.snapshot = [(b, b.detach().clone()) for b in model.buffers()]

    def on_nonfinite(self, loss: torch.Tensor, files: List[str], where: str) -> None:
        message = f"non-finite loss ({float(loss.detach().float().sum())}) {where}; the batch's files: {format_files(files)}"
        if self.policy == "fail":
            raise FloatingPointError(
                message + ". Check these files (e.g. extreme sample values), lower the learning rate, "
                "or set task.nonfinite_loss=skip to skip such updates"
            )
        logger.warning("%s: skipping this update (task.nonfinite_loss=skip)", message)
        self.bad_in_update = True

    def should_skip(self) -> bool:
        """Called once per update before the optimizer step, on every rank."""
        if self.policy != "skip":
            return False
        skip = any_rank(self.bad_in_update)
        self.bad_in_update = False
        if not skip:
            self.consecutive = 0
            return False
        if self.snapshot is not None:
            with torch.no_grad():
                for buf, saved in self.snapshot:
                    buf.copy_(saved)
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive > self.max_skips:
            raise FloatingPointError(
                f"{self.consecutive} consecutive updates had a non-finite loss (task.max_nonfinite_skips="
                f"{self.max_skips}): the model or the data is broken, stopping"
            )
        logger.warning("update %d skipped (non-finite loss on some rank); %d skipped so far",
                       (self.update_num or 0) + 1, self.total_skipped)
        return True


# --------------------------------------------------------------------------- resuming on several ranks
def trusted_broadcast_object_slow(original):
    """fairseq's ``_broadcast_object_slow`` (``original``) whose receiving ranks unpickle in full.

    When a multi-process run resumes, rank 0 reads the checkpoint and broadcasts it, pickled, to
    the other ranks; they ``torch.load`` it with torch's default, ``weights_only=True`` since torch
    2.6, which refuses the OmegaConf config fairseq put into the state after reading it. The bytes
    come from rank 0 of the same run: the receiving side loads them with ``weights_only=False``
    (fairseq's protocol otherwise unchanged: the length, then the bytes)."""
    import io

    from fairseq.distributed.utils import broadcast, get_rank

    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        if get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    return _broadcast_object_slow
