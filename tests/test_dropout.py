"""The encoder's dropout (``modules/dropout.py``): mask statistics, seeding, gradients, and the CPU
training attention against ``scaled_dot_product_attention``."""

import pytest
import torch
import torch.nn.functional as F

from beats_fairseq.modules.dropout import Dropout, attention_with_dropout, dropout, keep_mask
from beats_fairseq.modules.encoder import MultiheadAttention


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_drops_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    mask = keep_mask((1001, 999), p, "cpu")  # count not a multiple of 4: the last random word is used in part
    q = round(p * 2**16) / 2**16
    dropped = mask == 0
    # 1e6 draws: the share is within 5 standard deviations of q, in each 16-bit position of the words too
    tol = 5 * (q * (1 - q) / mask.numel()) ** 0.5
    for part in (dropped, *(dropped.flatten()[i::4] for i in range(4))):
        assert abs(part.float().mean().item() - q) < 2 * tol
    assert torch.allclose(mask[~dropped], torch.tensor(1 / (1 - q)))


def test_dropout_follows_the_torch_seed_and_keeps_its_mask_for_backward():
    x = torch.randn(4, 50, 8, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), y)
    assert not torch.equal(dropout(x, 0.2), y)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, y.detach() / x.detach())  # d(x * mask)/dx = mask
    assert x.grad.unique().tolist() == pytest.approx([0.0, 2**16 / (2**16 - round(0.2 * 2**16))])
    assert dropout(x, 0.2, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.3).eval()
    assert module(x) is x and "p=0.3" in repr(module)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def strided_qkv(batch=2, heads=3, length=9, width=4):
    """q, k, v ``(B, H, L, D)`` as the encoder passes them: head-split views of one ``(B, L, 3 H D)`` tensor."""
    x = torch.randn(batch, length, 3 * heads * width, dtype=torch.float64)
    parts = x.split(heads * width, -1)
    return [t.view(batch, length, heads, width).transpose(1, 2).detach().requires_grad_() for t in parts]


@pytest.mark.parametrize("bias_batch", [1, 2, None])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_with_dropout_is_sdpa_with_the_gated_bias(bias_batch, gated, padded):
    if gated and bias_batch is None:
        pytest.skip("a gate needs a bias")
    torch.manual_seed(0)
    q, k, v = strided_qkv()
    bias = None if bias_batch is None else torch.randn(bias_batch, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(2, 3, 9, 1, dtype=torch.float64, requires_grad=True) if gated else None
    pad = None
    if padded:
        pad = torch.zeros(2, 1, 1, 9, dtype=torch.float64)
        pad[1, ..., -2:] = float("-inf")  # the last two keys of the second clip are padding
    mask = None if bias is None else (bias * gate if gated else bias)
    if pad is not None:
        mask = pad if mask is None else mask + pad
    torch.testing.assert_close(attention_with_dropout(q, k, v, 0.0, bias, gate, pad),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def with_dropout(q, k, v, bias=None, gate=None):
        torch.manual_seed(5)  # the same mask at every call
        return attention_with_dropout(q, k, v, 0.3, bias, gate, pad)
    inputs = [t for t in (q, k, v, bias, gate) if t is not None]
    assert torch.autograd.gradcheck(with_dropout, inputs)
    # the dropout is on the attention probabilities: rows of the kept weights times v
    torch.manual_seed(5)
    scores = q @ k.transpose(-1, -2) / 2 + (0 if mask is None else mask)
    probs = torch.softmax(scores, -1).reshape(6, 9, 9)
    expected = (probs * keep_mask(probs.shape, 0.3, "cpu").double()).view(2, 3, 9, 9) @ v
    torch.testing.assert_close(with_dropout(*inputs), expected)


def test_attention_with_dropout_runs_in_float32_under_autocast():
    q, k, v = (t.detach().float().requires_grad_() for t in strided_qkv())
    bias, gate = torch.randn(1, 3, 9, 9), torch.rand(2, 3, 9, 1)
    torch.manual_seed(5)
    expected = attention_with_dropout(q, k, v, 0.3, bias, gate)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        out = attention_with_dropout(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3, bias, gate)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)  # only the inputs were rounded to bf16
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError, match="a gate needs a bias"):
        attention_with_dropout(q, k, v, 0.3, None, gate)


def test_attention_dropout_acts_in_training_only():
    torch.manual_seed(0)
    attention = MultiheadAttention(16, 4, 0.5, True, 32, 64, True)
    x = torch.randn(2, 7, 16)
    bias = attention.compute_bias(torch.arange(7).unsqueeze(0))
    attention.eval()
    reference = attention(x, position_bias=bias)
    attention.train()
    torch.manual_seed(1)
    trained = attention(x, position_bias=bias)
    assert not torch.allclose(trained, reference)  # half the attention weights dropped
    attention.dropout = 0.0
    torch.testing.assert_close(attention(x, position_bias=bias), reference)
