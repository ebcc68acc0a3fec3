"""``beats_mam``: cross-entropy on the labels of the masked patches (paper eq. 1).

Logged: ``loss`` (nats per masked patch; chance is ln K = 6.93 for K = 1024),
``accuracy`` (masked-label accuracy, chance about 1/K), ``code_usage`` (share of the K
codes present among the labels of the update's batch) and ``code_perplexity``
(perplexity of that label distribution; K when all codes are equally frequent).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..metrics import code_usage


@dataclass
class BeatsMamConfig(FairseqDataclass):
    pass


def label_histogram(labels: torch.Tensor, num_codes: int) -> torch.Tensor:
    return torch.bincount(labels.flatten(), minlength=num_codes).float().cpu()


def log_code_usage(logging_outputs, key: str = "code_counts") -> None:
    """``code_usage`` and ``code_perplexity`` (:func:`beats_fairseq.metrics.code_usage`) of the
    summed code histograms of one update."""
    counts = [log[key] for log in logging_outputs if key in log]
    if not counts:
        return
    total = torch.stack([torch.as_tensor(c, dtype=torch.float) for c in counts]).sum(0)
    if total.sum() <= 0:
        return
    usage, perplexity = code_usage(total)
    metrics.log_scalar("code_usage", usage, round=3)
    metrics.log_scalar("code_perplexity", perplexity, round=1)


@register_criterion("beats_mam", dataclass=BeatsMamConfig)
class BeatsMamCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        # clip ids: per-clip masks (beats_fairseq/seeding.py)
        out = model(**sample["net_input"], target=sample.get("target"), clip_ids=sample.get("id"))
        logits, targets = out["logits"], out["targets"]
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        sample_size = targets.numel()
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum()
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "correct": correct.item(),
            "count": sample_size,
            "sample_size": sample_size,
            "nsentences": sample["id"].numel(),
            "ntokens": sample_size,
            "code_counts": label_histogram(out["labels"], out["num_codes"]),
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        count = sum(log.get("count", 0) for log in logging_outputs)
        correct = sum(log.get("correct", 0) for log in logging_outputs)
        if count > 0:
            metrics.log_scalar("loss", loss / count, count, round=4)
            metrics.log_scalar("accuracy", correct / count, count, round=4)
        log_code_usage(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
