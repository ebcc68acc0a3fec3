"""``beats_tokenizer_distillation``: the tokenizer training loss (paper eq. 3).

Per valid (unpadded) patch ``t`` with encoder-side vector ``z_t`` (the ``quantize_layer``
output), nearest code ``e_t`` and estimator output ``o_t`` predicting the teacher target ``y_t``::

    loss_t = distill_weight * (1 - cos(o_t, y_t))
           + commitment_weight * ||sg[e_t] - l2(z_t)||^2 / quant_dim

Summed over the valid patches of the batch; ``sample_size`` is their number, so fairseq's
gradient normalisation gives the per-patch mean. The paper's eq. 3 maximises the cosine and
adds ``||sg[l2(e)] - l2(z)||^2 + ||l2(e) - sg[l2(z)]||^2``. Here the first (commitment) term is
the official quantizer's ``mse(sg(e), l2(z))`` (mean over the code dimensions, hence the
``/ quant_dim``), and the second (codebook) term has no gradient: the codebook is a buffer moved
by the EMA update (normalised per-code sums of the assigned ``l2(z)``), which realises it.
The estimator sees the straight-through quantized vectors, so the distillation gradient
reaches the encoder through ``l2(z)``. The weights are this criterion's settings
(``criterion.distill_weight``, ``criterion.commitment_weight``).

Logged: ``loss`` (per patch), ``cosine`` (mean teacher/estimator cosine over valid patches),
``commitment`` (per patch), and, from the code histogram of the valid patches summed over the
logged span and over all workers (training: the last ``common.log_interval`` updates, or the
epoch in the epoch summary; validation: the whole validation set), ``code_usage`` (share of the
``codebook_size`` codes used at least once) and ``code_perplexity`` (exp of the histogram's entropy;
``codebook_size`` for perfectly uniform use). Both are therefore independent of the batch size and
of the number of processes.
"""

from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..metrics import code_usage


@dataclass
class BeatsTokenizerDistillationConfig(FairseqDataclass):
    distill_weight: float = field(default=1.0, metadata={"help": "weight of the distillation loss sum(1 - cos)"})
    commitment_weight: float = field(
        default=1.0, metadata={"help": "weight of the commitment loss ||sg(e) - l2(z)||^2 / quant_dim per patch"})


@register_criterion("beats_tokenizer_distillation", dataclass=BeatsTokenizerDistillationConfig)
class BeatsTokenizerDistillationCriterion(FairseqCriterion):
    def __init__(self, task, distill_weight: float = 1.0, commitment_weight: float = 1.0):
        super().__init__(task)
        self.distill_weight = distill_weight
        self.commitment_weight = commitment_weight

    def forward(self, model, sample, reduce=True):
        if not sample or "net_input" not in sample:  # every clip of the batch was unreadable
            raise RuntimeError("empty batch: every clip of it was skipped as bad audio")
        out = model(**sample["net_input"])
        valid = out["valid"]
        count = valid.sum()
        cosine_sum = out["cosine"].masked_fill(~valid, 0.0).sum()
        distill = count - cosine_sum
        commitment = out["commitment"] * count
        loss = self.distill_weight * distill + self.commitment_weight * commitment
        sample_size = int(count)
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "cosine": cosine_sum.item(),
            "commitment": commitment.item(),
            "count": sample_size,
            "sample_size": sample_size,
            "ntokens": sample_size,
            "nsentences": sample["id"].numel(),
        }
        logging_output["code_counts"] = out["local_counts"].detach().float().cpu()  # this worker's patches
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        count = total("count")
        if count > 0:
            metrics.log_scalar("loss", total("loss") / count, count, round=4)
            metrics.log_scalar("cosine", total("cosine") / count, count, round=4)
            metrics.log_scalar("commitment", total("commitment") / count, count, round=5)
        histograms = [torch.as_tensor(log["code_counts"]).float().cpu() for log in logging_outputs
                      if "code_counts" in log]
        if histograms:  # summed over the span by the meter; "_" keeps it out of the printed stats
            metrics.log_scalar_sum("_code_counts", torch.stack(histograms).sum(0))
            metrics.log_derived("code_usage", lambda meters: round(code_usage(meters["_code_counts"].sum)[0], 3))
            metrics.log_derived("code_perplexity", lambda meters: round(code_usage(meters["_code_counts"].sum)[1], 1))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
