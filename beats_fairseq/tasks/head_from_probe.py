"""``model.head_init=probe``: the fine-tuning head starts as the linear probe of the encoder under it.

Linear probing, then fine-tuning (LP-FT; Kumar et al., "Fine-Tuning can Distort Pretrained Features
and Underperform Out-of-Distribution", ICLR 2022). A randomly initialised head sends random gradients
into the encoder in the first updates, and on a few labelled clips those updates reshape features the
head has not learnt to read yet. Started from the probe, fine-tuning begins where the frozen features
already classify the training clips, and moves the encoder only as far as the loss still asks.

Before the first update of a fresh run (never in a resumed one: its head is in its checkpoint), the
task (``beats_audio_classification``) calls :func:`init_head_from_probe`:

1. every clip the training split keeps goes through the model's frozen encoder in eval mode, cut at
   ``task.max_sample_size`` from its start, and is pooled into the clip feature the head reads
   (``modules/pooling.head_input``: each band's mean and std over time for ``band_stats``, the mean
   of all patches for ``mean``; the probes' ``bands`` and ``mean`` features);
2. the probes' logistic regression is fit on them (``linear_probe.fit_linear``: standardised, L2,
   C = 1) and written into the head, the standardisation folded into its weights and bias.

The head's logits are then the probe's.
"""

import logging
import time

import numpy as np
import torch

from ..linear_probe import fit_linear
from ..metrics import accuracy, mean_average_precision
from ..modules.pooling import head_input

logger = logging.getLogger(__name__)


@torch.no_grad()
def clip_inputs(model, dataset, batch_size: int = 8):
    """(``(clips, D)`` float32 head inputs of the frozen encoder in eval mode, ``(clips, classes)`` multi-hot
    targets) of every clip of ``dataset`` (a ``LabelledAudioDataset``) that reads."""
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    features, targets = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            if not batch:
                continue
            source = batch["net_input"]["source"].to(parameter.device)
            padding_mask = batch["net_input"]["padding_mask"]
            padding_mask = None if padding_mask is None else padding_mask.to(parameter.device)
            with torch.autocast(parameter.device.type, dtype=parameter.dtype, enabled=parameter.dtype != torch.float32):
                x, patch_mask = model.encode(source.to(parameter.dtype), padding_mask)
            features.append(head_input(x.float(), patch_mask, model.cfg.head_pooling,
                                       model.backbone.frequency_bands).cpu().numpy())
            target = batch["target"]
            if not dataset.multilabel:
                target = torch.nn.functional.one_hot(target, dataset.num_classes)
            targets.append(target.float().numpy())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("model.head_init=probe: no training clip could be read")
    return np.concatenate(features), np.concatenate(targets)


def init_head_from_probe(model, dataset, batch_size: int = 8) -> float:
    """Fit the probe of ``model``'s frozen encoder on the clips of ``dataset`` (the training split, read
    without random crops) and write it into ``model.head``; returns its training accuracy or mAP."""
    start = time.time()
    x, targets = clip_inputs(model, dataset, batch_size)
    weight, bias = fit_linear(x, targets, dataset.multilabel).folded()
    parameter = model.head.weight
    with torch.no_grad():
        parameter.copy_(torch.as_tensor(weight, dtype=parameter.dtype))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=parameter.dtype))
    logits = x.astype(np.float64) @ weight.T + bias
    metric, value = (("mAP", mean_average_precision(logits, targets)) if dataset.multilabel
                     else ("accuracy", accuracy(logits, targets)))
    logger.info("head initialised from a linear probe of the encoder's features of %d training clips: training "
                "%s %.4f, %.1f s", len(x), metric, value, time.time() - start)
    return value
