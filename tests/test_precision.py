"""Mixed precision: the fbank, the tokenizer labels and the quantizer distances stay float32.

fairseq's ``common.bf16`` casts the model with ``.to(torch.bfloat16)`` and every float32
tensor of the batch to bf16; ``common.amp`` runs the forward pass under autocast (the tasks
of this project use CPU autocast, bf16, when training on CPU). The checks:

* fbank and random-projection labels of a bf16 model equal the float32 ones exactly (the
  tokenizer buffers stay float32; with ``task.exact_waveforms``, on under ``common.bf16``, the
  waveform is collated as float64 and survives fairseq's cast of the batch untouched);
* the EMA codebook stays float32 and in use (no collapse) when trained on bf16 inputs;
* ``common.amp`` forward passes run under autocast; end-to-end bf16/amp runs on CPU have
  finite losses and keep the codebook in float32.

``common.fp16`` is a GPU path in fairseq (its overflow handling allocates CUDA tensors), so
it is not run here; see docs/scale.md.
"""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from beats_fairseq.loading import load_frozen_tokenizer
from beats_fairseq.models.beats import BeatsConfig, BeatsModel
from beats_fairseq.tokenizers import FrozenTokenizer
from beats_fairseq.tokenizers.quantizer import NormEMAVectorQuantizer
from test_distributed import (
    FINETUNE,
    ITER1,
    TOKENIZER,
    checkpoint,
    finetune_args,
    override,
    parse_metrics,
    pretrain_args,
    teacher,  # noqa: F401  (fixture)
    tokenizer_args,
    train,
)

TINY = dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, dropout=0.0, attention_dropout=0.0, conv_pos=16,
            label_predictor_layers=1, codebook_size=64, codebook_dim=16)


def tiny_beats():
    torch.manual_seed(0)
    return BeatsModel(OmegaConf.structured(BeatsConfig(**TINY)))


def waveforms(batch=3, samples=16000 * 2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000.0
    tone = torch.sin(2 * math.pi * (200 + 300 * torch.rand(batch, 1, generator=g)) * t)
    return 0.3 * tone + 0.05 * torch.randn(batch, samples, generator=g)


def bf16_convert(sample):
    """fairseq's ``Trainer._fp_convert_sample`` with ``common.bf16=true``."""
    from fairseq.trainer import Trainer

    fake = SimpleNamespace(cfg=SimpleNamespace(common=SimpleNamespace(fp16=False, bf16=True)))
    return Trainer._fp_convert_sample(fake, sample)


def test_fbank_and_labels_of_a_bf16_model_equal_float32():
    model = tiny_beats().eval()
    half = copy.deepcopy(model).to(torch.bfloat16)  # what common.bf16 does to the model
    assert half.tokenizer.projection.dtype == torch.float32 and half.tokenizer.codebook.dtype == torch.float32
    assert half.label_head.weight.dtype == torch.bfloat16
    wav = waveforms()
    exact = bf16_convert({"source": wav.double()})["source"]  # task.exact_waveforms: float64 batch
    assert exact.dtype == torch.float64
    fbank32 = model.backbone.fbank(wav)
    fbank16 = half.backbone.fbank(exact)
    assert fbank16.dtype == torch.float32 and torch.equal(fbank32, fbank16)
    labels32 = model.compute_labels(wav, None, fbank32)
    assert torch.equal(labels32, half.compute_labels(exact, None, fbank16))
    # under autocast too (common.amp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fbank_ac = model.backbone.fbank(wav)
        assert fbank_ac.dtype == torch.float32 and torch.equal(fbank32, fbank_ac)
        assert torch.equal(labels32, model.compute_labels(wav, None, fbank_ac))
    # without exact waveforms, fairseq's cast rounds the samples to bf16 and the fbank changes
    rounded = bf16_convert({"source": wav})["source"]
    assert rounded.dtype == torch.bfloat16 and not torch.equal(half.backbone.fbank(rounded), fbank32)


def test_trained_tokenizer_labels_of_a_bf16_model_equal_float32(oracle):
    """iter2+: the frozen trained tokenizer (attached as the task does) is outside the model's module
    tree: never saved with it and never cast with it, so it stays float32."""
    torch.manual_seed(0)
    path = str(oracle.dir / "tokenizer_small.pt")
    tokenizer = FrozenTokenizer(load_frozen_tokenizer(path), source=path)
    cfg = dict(TINY, tokenizer_path=path, codebook_size=tokenizer.codebook_size)
    model = BeatsModel(OmegaConf.structured(BeatsConfig(**cfg))).eval()
    model.set_tokenizer(tokenizer)
    assert not any(k.startswith(("tokenizer.", "frozen_tokenizer.")) for k in model.state_dict())
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in half.frozen_tokenizer.model.parameters())
    assert half.label_head.weight.dtype == torch.bfloat16
    wav = waveforms(batch=2)
    labels32 = model.compute_labels(wav, None, None)
    assert torch.equal(labels32, half.compute_labels(wav.double(), None, None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(labels32, model.compute_labels(wav, None, None))


def test_exact_waveforms_collate_float64_only_under_mixed_precision(tmp_path):
    import numpy as np
    import soundfile as sf

    from beats_fairseq.data.manifest import write_manifest
    from beats_fairseq.tasks.audio_task import BeatsAudioTaskConfig
    from beats_fairseq.tasks.beats_pretraining import BeatsPretrainingTask

    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", 0.1 * np.random.default_rng(i).standard_normal(8000), 16000, subtype="FLOAT")
    write_manifest(str(tmp_path / "train.tsv"), str(tmp_path), [("0.wav", 8000), ("1.wav", 8000)])
    for flag, dtype in ((True, torch.float64), (False, torch.float32)):
        cfg = OmegaConf.structured(BeatsAudioTaskConfig(data=str(tmp_path), seed=1, exact_waveforms=flag))
        task = BeatsPretrainingTask.setup_task(cfg)
        task.load_dataset("train")
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=2).next_epoch_itr(shuffle=False)
        batch = next(iter(itr))
        source = batch["net_input"]["source"]
        assert source.dtype == dtype and batch["num_bad_audio"] == 0
        if flag:
            after = bf16_convert(batch)["net_input"]["source"]
            assert after.dtype == torch.float64 and torch.equal(after, source)
            assert torch.equal(source.float().double(), source)  # float32 samples, exactly


def test_quantizer_stays_float32_and_in_use_under_bf16():
    """A bf16 model keeps a float32 codebook; trained on bf16 inputs it uses about as many codes as in float32."""

    def run(dtype, autocast):
        torch.manual_seed(0)
        q = NormEMAVectorQuantizer(32, 8, kmeans_init=True).to(dtype).train()
        assert all(b.dtype == torch.float32 for name, b in q.named_buffers() if name.startswith("embedding."))
        g = torch.Generator().manual_seed(1)
        centres = torch.nn.functional.normalize(torch.randn(24, 8, generator=g), dim=-1)
        used = torch.zeros(32, dtype=torch.bool)
        for step in range(30):
            z = centres[torch.randint(0, 24, (256,), generator=g)] + 0.05 * torch.randn(256, 8, generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out, loss, codes, stats = q(z.to(dtype))
            assert out.dtype == dtype and torch.isfinite(loss) and stats["counts"].dtype == torch.float32
            if step >= 20:
                used[codes.unique()] = True
        assert q.embedding.weight.dtype == torch.float32 and torch.isfinite(q.embedding.weight).all()
        return int(used.sum())

    fp32 = run(torch.float32, False)
    bf16 = run(torch.bfloat16, False)
    autocast = run(torch.float32, True)
    assert fp32 >= 20
    assert bf16 >= 20 and bf16 >= fp32 - 3, (fp32, bf16)
    assert autocast == fp32  # autocast does not reach the quantizer's float32 computations


def test_quantizer_assignments_under_autocast_equal_float32():
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(64, 16, kmeans_init=False).eval()
    z = torch.randn(4, 50, 16)
    _, _, codes32, _ = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _, codes_ac, _ = q(z)
    assert torch.equal(codes32, codes_ac) and out.dtype == torch.float32


@pytest.mark.parametrize("kernel", [16, 128])
def test_positional_convolution_in_bf16_and_under_autocast_matches_float32(kernel):
    """The grouped positional conv (128 wide, 16 groups, as officially) in bf16 is within bf16 rounding.

    oneDNN's bf16 grouped convolution gives a relative error of about 1 on CPUs with AMX for
    kernels >= 16 (torch 2.11); the module computes it in float32 there.
    """
    from beats_fairseq.modules.encoder import WeightNormConv1d

    torch.manual_seed(0)
    conv = WeightNormConv1d(64, kernel, 16)
    with torch.no_grad():
        conv.bias.normal_()
        x = torch.randn(2, 150, 64).transpose(1, 2)  # (B, C, L), memory (B, L, C) as in the encoder
        ref = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = conv(x)
        half = copy.deepcopy(conv).bfloat16()(x.bfloat16())
    assert half.dtype == torch.bfloat16 and half.shape == ref.shape == autocast.shape
    for out in (autocast, half):
        assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("kernel", [16, 15, 128])
def test_fft_positional_convolution_equals_conv1d_in_values_and_gradients(kernel):
    """The CUDA path of the positional conv (``fft_grouped_conv1d``) is the same function as ``F.conv1d``."""
    from beats_fairseq.modules.encoder import fft_grouped_conv1d

    torch.manual_seed(0)
    x = torch.randn(2, 64, 150, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(64, 4, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(64, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 64, 150 + 1 - kernel % 2, dtype=torch.float64)
    results = []
    for conv in (lambda *a: torch.nn.functional.conv1d(*a, padding=kernel // 2, groups=16),
                 lambda *a: fft_grouped_conv1d(*a, kernel // 2, 16)):
        out = conv(x, weight, bias)
        results.append([out, *torch.autograd.grad(out, (x, weight, bias), upstream)])
    for ref, fft in zip(*results):  # float64 in, float64 transform: rounding of float64 only
        assert fft.shape == ref.shape and (fft - ref).abs().max() <= 1e-10 * ref.abs().max()
    assert results[1][0].dtype == torch.float64  # returns the input's dtype
    # float32 (and bf16) inputs are transformed in float32: float32 rounding of the float64 result
    inputs32 = [t.detach().float().requires_grad_() for t in (x, weight, bias)]
    out32 = fft_grouped_conv1d(*inputs32, kernel // 2, 16)
    results32 = [out32, *torch.autograd.grad(out32, inputs32, upstream.float())]
    for ref, fft in zip(results[0], results32):
        assert fft.dtype == torch.float32 and (fft.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_amp_train_step_runs_the_forward_under_autocast(tmp_path):
    """``common.amp``: the task's train step autocasts (bf16 on CPU), backward is the optimizer's."""
    from fairseq.optim import FairseqOptimizer
    from fairseq.optim.amp_optimizer import AMPOptimizer

    from beats_fairseq.tasks.audio_task import BeatsAudioTaskConfig
    from beats_fairseq.tasks.beats_pretraining import BeatsPretrainingTask

    class FakeAMP(AMPOptimizer):
        def __init__(self):
            self.calls = 0

        def backward(self, loss):
            self.calls += 1
            loss.backward()

    class Plain(FairseqOptimizer):
        def __init__(self):
            pass

        def backward(self, loss):
            loss.backward()

    seen = []

    def criterion(model, sample):
        seen.append(torch.is_autocast_enabled("cpu"))
        y = model(sample["net_input"]["source"])
        seen.append(y.dtype)
        loss = y.float().pow(2).sum()
        return loss, 1, {"loss": loss.item()}

    cfg = OmegaConf.structured(BeatsAudioTaskConfig(data=str(tmp_path), seed=1, exact_waveforms=False))
    task = BeatsPretrainingTask.setup_task(cfg)
    model = torch.nn.Linear(4, 2)
    model.set_num_updates = lambda n: None
    sample = {"id": torch.tensor([0]), "net_input": {"source": torch.randn(1, 4)}}
    optimizer = FakeAMP()
    _, _, log = task.train_step(sample, model, criterion, optimizer, update_num=0)
    assert seen == [True, torch.bfloat16] and optimizer.calls == 1
    assert log["bad_audio"] == 0 and log["nonfinite_skipped"] == 0
    seen.clear()
    task.train_step(sample, model, criterion, Plain(), update_num=1)
    assert seen == [False, torch.float32]


# --------------------------------------------------------------------------- end to end on CPU
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bf16", "amp"])
def test_pretraining_runs_in_mixed_precision_on_cpu(demo_data, tmp_path, mode):
    save = tmp_path / "ckpt"
    log = train(ITER1, "tiny", *override(pretrain_args(demo_data, save, 4), f"common.{mode}=true",
                                         "optimization.max_update=3"))
    losses = [v["loss"] for v in parse_metrics(log, "train") + parse_metrics(log)]
    assert losses and all(math.isfinite(x) for x in losses)
    model = checkpoint(save)["model"]
    # the random-projection tokenizer is saved as float32 and unchanged (labels as in float32)
    fresh = BeatsModel(OmegaConf.structured(BeatsConfig(**dict(TINY, codebook_size=64, codebook_dim=16))))
    for key in ("projection", "codebook"):
        assert model[f"tokenizer.{key}"].dtype == torch.float32
        assert torch.equal(model[f"tokenizer.{key}"], getattr(fresh.tokenizer, key))


@pytest.mark.slow
def test_tokenizer_training_in_bf16_keeps_the_codebook(demo_data, teacher, tmp_path):  # noqa: F811
    """bf16 tokenizer training: float32, finite codebook buffers and the code usage of a float32 run."""
    metrics = {}
    for mode in ("fp32", "bf16"):
        save = tmp_path / mode
        args = override(tokenizer_args(demo_data, save, 8, teacher, kmeans=True), f"common.bf16={mode == 'bf16'}",
                        "optimization.max_update=6", "checkpoint.save_interval_updates=3",
                        "dataset.validate_interval_updates=3")
        metrics[mode] = parse_metrics(train(TOKENIZER, "tiny", *args))
        model = checkpoint(save)["model"]
        for key in ("quantize.embedding.weight", "quantize.embedding.embed_avg", "quantize.embedding.cluster_size",
                    "quantize.cluster_size"):
            assert model[key].dtype == torch.float32 and torch.isfinite(model[key]).all(), (mode, key)
    assert len(metrics["bf16"]) == len(metrics["fp32"]) == 2
    for ref, got in zip(metrics["fp32"], metrics["bf16"]):
        assert math.isfinite(got["loss"]) and abs(got["loss"] - ref["loss"]) <= 0.1 * ref["loss"], (ref, got)
        # codes in use over the whole validation set: no collapse relative to float32
        assert got["code_usage"] >= ref["code_usage"] - 0.15, (ref, got)
        assert got["code_perplexity"] >= 0.7 * ref["code_perplexity"], (ref, got)


@pytest.mark.slow
def test_finetuning_with_augmentations_in_bf16_matches_float32(demo_data, tmp_path):
    """bf16 fine-tuning (beats_composite groups, per-clip mixup/SpecAugment/roll): the training
    loss of float32 within bf16 noise, and finite weights in the checkpoint."""
    metrics = {}
    for mode in ("fp32", "bf16"):
        save = tmp_path / mode
        args = override(finetune_args(demo_data, save, 8, augment=True), f"common.bf16={mode == 'bf16'}",
                        "optimization.max_update=6")
        metrics[mode] = parse_metrics(train(FINETUNE, "tiny", *args), "train")
        model = checkpoint(save)["model"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point()), mode
    ref, got = metrics["fp32"][-1], metrics["bf16"][-1]
    assert (got["loss"], got["gnorm"]) != (ref["loss"], ref["gnorm"])  # the bf16 run did compute in bf16
    assert math.isfinite(got["loss"]) and abs(got["loss"] - ref["loss"]) <= 0.05 * ref["loss"], (ref, got)
