"""Tokenizer: official parity, checkpoint keys, and the EMA vector quantizer."""

import pytest
import torch

from beats_fairseq.checkpoint import CheckpointKeyError
from beats_fairseq.loading import from_official, load, load_frozen_tokenizer
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel
from beats_fairseq.tokenizers import NotATokenizerError, NormEMAVectorQuantizer, l2norm
from oracle_checks import PARITY_TOL

TINY = dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, dropout=0.0, attention_dropout=0.0,
            codebook_size=32, quant_dim=16, estimator_layers=1, teacher_dim=8)


def tiny_tokenizer(**kw):
    torch.manual_seed(0)
    return BeatsTokenizerModel(BeatsTokenizerConfig(**dict(TINY, **kw)))


def buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def official(oracle):
    return oracle("tokenizer_small"), oracle("inputs"), oracle("tokenizer_outputs")


# ---------------------------------------------------------------------- official parity
@pytest.mark.parametrize("masked", [True, False])
def test_labels_and_quantize_input_match_oracle(official, masked):
    ck, inputs, ref = official
    model = from_official(ck, "tokenizer_small.pt").eval()
    mask = inputs["padding_mask"] if masked else None
    labels = model.extract_labels(inputs["source"], mask)
    assert labels.shape == (2, 144) and labels.dtype == torch.long
    assert torch.equal(labels.flatten(), ref["labels" if masked else "labels_no_mask"])  # clip 0 first
    with torch.no_grad():
        z, _ = model.encode(inputs["source"], mask)
    expected = ref["intermediates"]["quantize_input"] if masked else ref["quantize_input_no_mask"]
    torch.testing.assert_close(z, expected, **PARITY_TOL)


def test_load_dispatches_official_tokenizer_and_keeps_buffers(oracle):
    path = oracle.dir / "tokenizer_small.pt"
    model = load(str(path))
    assert isinstance(model, BeatsTokenizerModel) and model.estimator is None
    before = buffers(model)
    inputs = oracle("inputs")
    model.extract_labels(inputs["source"], inputs["padding_mask"])
    with torch.no_grad():
        model.quantize(torch.randn(5, 16))  # eval-mode forward of the quantizer itself
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"eval mode changed {key}"


def test_missing_key_is_reported(official):
    ck = dict(official[0])
    ck["model"] = {k: v for k, v in ck["model"].items() if k != "quantize.embedding.embed_avg"}
    with pytest.raises(CheckpointKeyError, match="quantize.embedding.embed_avg"):
        from_official(ck, "broken.pt")


def test_official_round_trip_is_identical(official):
    ck = official[0]
    back = from_official(ck).to_official()
    assert back["cfg"] == ck["cfg"]
    assert set(back["model"]) == set(ck["model"])
    for key, value in ck["model"].items():
        assert torch.equal(back["model"][key], value), key


def test_official_keys_plus_estimator():
    model = tiny_tokenizer()
    keys = set(model.state_dict())
    official = set(model.to_official()["model"])
    from beats_fairseq.models.beats_tokenizer import PROJECT_ONLY_KEYS

    assert set(PROJECT_ONLY_KEYS) <= keys  # re-seeding bookkeeping travels in project checkpoints
    assert {k for k in keys if not k.startswith("estimator.") and k not in PROJECT_ONLY_KEYS} == {
        ("backbone." + k if not k.startswith("quantize") else k) for k in official
    }
    assert {"quantize.embedding.weight", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg",
            "quantize.embedding.initted", "quantize.cluster_size"} <= official
    assert not any(name.startswith("quantize.") for name, _ in model.named_parameters())  # codebook = buffers


def test_load_frozen_tokenizer(oracle, tmp_path):
    tok = load_frozen_tokenizer(str(oracle.dir / "tokenizer_small.pt"))
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    parent = torch.nn.Module()
    parent.tok = tok
    parent.train()
    assert not tok.training and not tok.quantize.training
    inputs, ref = oracle("inputs"), oracle("tokenizer_outputs")
    assert torch.equal(tok.extract_labels(inputs["source"], inputs["padding_mask"]).flatten(), ref["labels"])
    with pytest.raises(NotATokenizerError, match="beats_small.pt"):
        load_frozen_tokenizer(str(oracle.dir / "beats_small.pt"))


def test_labels_ignore_autocast(official):
    ck, inputs, ref = official
    model = from_official(ck).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels = model.extract_labels(inputs["source"], inputs["padding_mask"])
    assert torch.equal(labels.flatten(), ref["labels"])


# ---------------------------------------------------------------------- quantizer
def test_kmeans_init_uses_data():
    torch.manual_seed(0)
    centers = l2norm(torch.randn(4, 8))
    data = centers.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 8)
    q = NormEMAVectorQuantizer(16, 8, kmeans_init=True).train()
    assert not q.initialised and torch.all(q.embedding.weight == 0)
    q(data)
    assert q.initialised
    cos = q.embedding.weight @ centers.t()
    assert (cos.max(dim=0).values > 0.99).all()  # every cluster has a code
    assert (cos.max(dim=1).values > 0.99).all()  # every code sits on a cluster
    torch.testing.assert_close(q.embedding.weight.norm(dim=-1), torch.ones(16))
    assert q.embedding.cluster_size.sum() == 200 and q.cluster_size.sum() == 200


def test_uninitialised_codebook_in_eval_is_an_error():
    q = NormEMAVectorQuantizer(4, 8, kmeans_init=True).eval()
    with pytest.raises(RuntimeError, match="not initialised"):
        q(torch.randn(3, 8))


def test_ema_update_moves_codes_towards_inputs():
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(2, 8, kmeans_init=False, decay=0.9).train()
    target = l2norm(q.embedding.weight[0] + 0.5 * torch.randn(8))
    before = float(q.embedding.weight[0] @ target)
    for _ in range(20):
        x = target.expand(16, 8)
        _, _, codes, stats = q(x)
        assert (codes == codes[0]).all()
    code = int(codes[0])
    after = float(q.embedding.weight[code] @ target)
    assert after > max(before, 0.99)
    torch.testing.assert_close(q.embedding.weight.norm(dim=-1), torch.ones(2))
    assert q.cluster_size[code] > 10 and stats["counts"][code] == 16


def test_padded_positions_do_not_update_the_codebook():
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(4, 8, kmeans_init=False).train()
    reference = NormEMAVectorQuantizer(4, 8, kmeans_init=False).train()
    reference.load_state_dict(q.state_dict())
    z = torch.randn(2, 3, 8)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    _, loss, codes, _ = q(z, valid=valid)
    _, ref_loss, ref_codes, _ = reference(z[valid])
    assert codes.shape == (2, 3) and torch.equal(codes[valid], ref_codes)
    torch.testing.assert_close(loss, ref_loss)
    for key, value in q.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], msg=key)
    before = buffers(q)
    q(z, valid=torch.zeros(2, 3, dtype=torch.bool))  # fully padded batch: no update
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_dead_code_reseeding_raises_usage():
    def run(threshold):
        torch.manual_seed(0)
        centers = l2norm(torch.randn(32, 16))
        q = NormEMAVectorQuantizer(32, 16, kmeans_init=False, dead_code_threshold=threshold,
                                   dead_code_interval=10).train()
        bad = l2norm(centers[0] + 0.3 * torch.randn(32, 16))  # every code near one cluster
        q.embedding.weight.copy_(bad)
        q.embedding.embed_avg.copy_(bad)
        for _ in range(60):
            _, _, _, stats = q(centers[torch.randint(0, 32, (256,))] + 0.05 * torch.randn(256, 16))
        return float(stats["usage"]), float(stats["perplexity"])

    usage_off, ppl_off = run(0.0)
    usage_on, ppl_on = run(0.1)
    assert usage_on >= 0.95 and usage_on > usage_off + 0.2 and ppl_on > ppl_off


def test_float32_under_autocast_and_straight_through():
    q = NormEMAVectorQuantizer(8, 4, kmeans_init=False).train()
    z = torch.randn(6, 4, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss, _, _ = q(z)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert q.embedding.weight.dtype == torch.float32
    (out.float().sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_straight_through_gradient_reaches_the_encoder():
    model = tiny_tokenizer().train()
    source = torch.randn(2, 16000) * 0.1
    out = model(source, targets=torch.randn(2, 48, 8))
    loss = (1 - out["cosine"]).sum() + out["commitment"]
    loss.backward()
    for name in ("backbone.patch_embedding.weight", "backbone.encoder.layers.0.fc1.weight",
                 "quantize_layer.0.weight", "estimator.proj_in.weight", "estimator.proj_out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the estimator-only path (without the commitment term) still reaches the encoder
    model.zero_grad()
    model(source, targets=torch.randn(2, 48, 8))["cosine"].sum().backward()
    assert model.backbone.encoder.layers[0].fc1.weight.grad.abs().sum() > 0
