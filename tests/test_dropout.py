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
    mask = keep_mask((1001, 999), p, "cpu")  # odd count: the last random word is used by half
    q = round(p * 2**15) / 2**15
    dropped = mask == 0
    # 1e6 draws: the share is within 5 standard deviations of q, in each half-word position too
    tol = 5 * (q * (1 - q) / mask.numel()) ** 0.5
    for part in (dropped, dropped.flatten()[0::2], dropped.flatten()[1::2]):
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
    assert x.grad.unique().tolist() == pytest.approx([0.0, 2**15 / (2**15 - round(0.2 * 2**15))])
    assert dropout(x, 0.2, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.3).eval()
    assert module(x) is x and "p=0.3" in repr(module)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


@pytest.mark.parametrize("mask_shape", [(2, 3, 9, 9), (1, 3, 9, 9), None])
def test_attention_with_dropout_is_sdpa(mask_shape):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = None if mask_shape is None else torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)
    inputs = (q, k, v) if mask is None else (q, k, v, mask)
    ours = attention_with_dropout(q, k, v, mask, 0.0)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def with_dropout(*args):
        torch.manual_seed(5)  # the same mask at every call
        return attention_with_dropout(*args[:3], args[3] if len(args) > 3 else None, 0.3)
    assert torch.autograd.gradcheck(with_dropout, inputs)
    # the dropout is on the attention probabilities: rows of the kept weights times v
    torch.manual_seed(5)
    scores = q @ k.transpose(-1, -2) / 2 + (0 if mask is None else mask)
    probs = torch.softmax(scores, -1).reshape(6, 9, 9)
    expected = (probs * keep_mask(probs.shape, 0.3, "cpu").double()).view(2, 3, 9, 9) @ v
    torch.testing.assert_close(with_dropout(*inputs), expected)


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
