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
reaches the encoder through ``l2(z)``. Weights come from the model config.

Logged: ``loss`` (per patch), ``cosine`` (mean teacher/estimator cosine over valid patches),
``commitment`` (per patch), ``code_usage`` (training: share of codes assigned in the last
``model.usage_window`` updates, over all workers; validation: share of codes used over the
whole validation set) and ``code_perplexity`` (exp of the entropy of the code histogram:
training, of the update's batch on all workers; validation, of the whole validation set, so
the value does not depend on the batch size or the number of processes).
"""

from dataclasses import dataclass

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from .beats_mam import log_code_usage


@dataclass
class BeatsTokenizerDistillationConfig(FairseqDataclass):
    pass


@register_criterion("beats_tokenizer_distillation", dataclass=BeatsTokenizerDistillationConfig)
class BeatsTokenizerDistillationCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        if not sample or "net_input" not in sample:  # every clip of the batch was unreadable
            raise RuntimeError("empty batch: every clip of it was skipped as bad audio")
        out = model(**sample["net_input"])
        cfg = model.cfg
        valid = out["valid"]
        count = valid.sum()
        cosine_sum = out["cosine"].masked_fill(~valid, 0.0).sum()
        distill = count - cosine_sum
        commitment = out["commitment"] * count
        loss = cfg.distill_weight * distill + cfg.commitment_weight * commitment
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
        if model.training:  # usage over the last updates; perplexity of the (all-reduced) batch histogram
            logging_output.update(nforward=1, usage=float(out["usage"]), perplexity=float(out["perplexity"]))
        else:  # validation: histogram summed over all batches and ranks (batching-independent)
            logging_output["code_counts"] = out["counts"].detach().float().cpu()
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        count, calls = total("count"), total("nforward")
        if count > 0:
            metrics.log_scalar("loss", total("loss") / count, count, round=4)
            metrics.log_scalar("cosine", total("cosine") / count, count, round=4)
            metrics.log_scalar("commitment", total("commitment") / count, count, round=5)
        if calls > 0:
            metrics.log_scalar("code_usage", total("usage") / calls, calls, round=3)
            metrics.log_scalar("code_perplexity", total("perplexity") / calls, calls, round=1)
        log_code_usage(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
