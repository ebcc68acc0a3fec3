"""``beats_classification``: BCE / cross-entropy for ``beats_classifier``, mAP and accuracy.

Loss (summed over clips, ``sample_size`` = clips; logged per clip, in nats):

* float targets ``(B, C)`` (multi-label data, or any data once mixup is on in training):
  binary cross-entropy with logits, averaged over classes;
* integer targets ``(B,)`` (single-label data without mixup, and single-label validation):
  cross-entropy over the softmax.

Validation metrics (usable as ``checkpoint.best_checkpoint_metric`` with
``maximize_best_checkpoint_metric: true``):

* multi-label: ``mAP`` over the whole validation set (macro over classes with at least one
  positive, ``beats_fairseq.metrics.mean_average_precision``). The sigmoid outputs and targets
  of every batch are kept (``metrics.log_concat_tensor``); ``logging_outputs_can_be_summed``
  is False, so in distributed validation fairseq gathers every rank's outputs
  (``common.all_gather_list_size`` must hold one rank's batch) instead of summing them.
* single-label: ``accuracy`` (top-1), from summed counts.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..metrics import mean_average_precision


@dataclass
class BeatsClassificationCriterionConfig(FairseqDataclass):
    pass


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed over clips: BCE (mean over classes) for float targets, CE for class ids."""
    logits = logits.float()
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(-1).sum()
    return F.cross_entropy(logits, target, reduction="sum")


@register_criterion("beats_classification", dataclass=BeatsClassificationCriterionConfig)
class BeatsClassificationCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        logits, _, target = model(**sample["net_input"], target=sample["target"], clip_ids=sample.get("id"))
        loss = classification_loss(logits, target)
        batch = logits.size(0)
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "sample_size": batch,
            "nsentences": batch,
            "ntokens": batch,
        }
        if not model.training:
            with torch.no_grad():
                scores = logits.detach().float()
                if target.is_floating_point():  # multi-label: keep outputs for the mAP
                    logging_output["_predictions"] = torch.sigmoid(scores).cpu()
                    logging_output["_targets"] = target.detach().float().cpu()
                else:
                    logging_output["correct"] = int((scores.argmax(-1) == target).sum().item())
                    logging_output["count"] = batch
        return loss, batch, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(float(log.get("loss", 0)) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        if sample_size > 0:
            metrics.log_scalar("loss", loss / sample_size, sample_size, round=4)
        count = sum(log.get("count", 0) for log in logging_outputs)
        if count > 0:
            metrics.log_scalar_sum("_correct", sum(log.get("correct", 0) for log in logging_outputs))
            metrics.log_scalar_sum("_count", count)
            metrics.log_derived(
                "accuracy",
                lambda meters: round(float(meters["_correct"].sum) / max(float(meters["_count"].sum), 1.0), 4),
            )
        predictions = [log["_predictions"] for log in logging_outputs if "_predictions" in log]
        if predictions:
            targets = [log["_targets"] for log in logging_outputs if "_predictions" in log]
            metrics.log_concat_tensor("_predictions", torch.cat(predictions))
            metrics.log_concat_tensor("_targets", torch.cat(targets))
            metrics.log_derived(
                "mAP",
                lambda meters: round(
                    mean_average_precision(meters["_predictions"].tensor, meters["_targets"].tensor), 4
                ),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False
