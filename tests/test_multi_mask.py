"""``model.num_masks``: K masked views per clip sharing one fbank, patch embedding and label set."""

import numpy as np
import pytest
import torch

from beats_fairseq.criterions.beats_mam import BeatsMamCriterion
from conftest import tiny_beats_model as tiny_model


def waves(batch=2, samples=32000):
    t = torch.arange(samples) / 16000
    tones = [0.3 * torch.sin(2 * np.pi * f * t) for f in (440, 250, 900, 1300)][:batch]
    return torch.stack(tones) + 0.05 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))


def test_view_zero_is_the_single_mask_of_before():
    """Pinned: the masks a single-mask update drew before num_masks existed (seed 7, update 3, clips 5 and 11)."""
    small = dict(embed_dim=16, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                 encoder_attention_heads=2, conv_pos=16, label_predictor_layers=1, codebook_size=16, codebook_dim=8)
    ids = torch.tensor([5, 11])
    for views in (1, 3):
        model = tiny_model(**small, num_masks=views).train()
        model.set_seed(7)
        model.set_num_updates(3)
        visible = model.sample_visible(None, 2, 16, "cpu", ids, views)
        assert visible.shape == (2 * views, 4)
        assert visible[::views].tolist() == [[5, 10, 11, 13], [1, 2, 7, 14]]
        for clip in range(2):
            rows = {tuple(r) for r in visible[clip * views:(clip + 1) * views].tolist()}
            assert len(rows) == views  # every view of a clip has its own mask
    # views of a clip do not depend on the other clips in the batch (sharding-free)
    alone = model.sample_visible(None, 1, 16, "cpu", ids[1:], 3)
    assert torch.equal(alone, visible[3:])


def test_one_mask_equals_view_zero_of_several(monkeypatch):
    """K=2 shares the front end and labels; its view 0 gives the K=1 logits; the loss covers all views."""
    source = waves()
    padding = torch.zeros(2, 32000, dtype=torch.bool)
    padding[1, 26000:] = True
    sample = {"id": torch.tensor([3, 8]), "net_input": {"source": source, "padding_mask": padding}}
    crit = BeatsMamCriterion(task=None)
    outs, logs = {}, {}
    for views in (1, 2):
        model = tiny_model(num_masks=views).eval()
        calls = []
        fbank = model.backbone.fbank
        monkeypatch.setattr(model.backbone, "fbank", lambda *a, **k: calls.append(1) or fbank(*a, **k))
        with torch.no_grad():
            outs[views] = model(**sample["net_input"], clip_ids=sample["id"])
            _, size, logs[views] = crit(model, sample)
        assert len(calls) == 2  # one fbank per forward (the criterion's forward is the second)
        assert size == logs[views]["sample_size"] == outs[views]["targets"].numel() == logs[views]["count"]
        assert logs[views]["nsentences"] == 2
    one, two = outs[1], outs[2]
    assert torch.equal(one["labels"], two["labels"])  # usage statistics once per clip
    assert torch.equal(logs[1]["code_counts"], logs[2]["code_counts"])
    n1 = one["targets"].numel()
    assert n1 < two["targets"].numel() <= 2 * n1 + 2
    # rows are clip-major (clip 0 view 0, clip 0 view 1, ...): one clip's view 0 is its K=1 update
    m1, m2 = tiny_model(num_masks=1).eval(), tiny_model(num_masks=2).eval()
    with torch.no_grad():
        single = m1(source[:1], clip_ids=torch.tensor([3]))
        double = m2(source[:1], clip_ids=torch.tensor([3]))
    k = single["targets"].numel()
    assert torch.equal(double["targets"][:k], single["targets"])  # same labels at the same masked patches
    torch.testing.assert_close(double["logits"][:k], single["logits"], atol=1e-5, rtol=1e-5)
    assert double["targets"].numel() == 2 * k


def test_several_masks_loss_falls():
    model = tiny_model(num_masks=2)
    crit = BeatsMamCriterion(task=None)
    sample = {"id": torch.arange(2), "net_input": {"source": waves(),
                                                    "padding_mask": torch.zeros(2, 32000, dtype=torch.bool)}}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        model.set_num_updates(step)
        loss, size, log = crit(model, sample)
        assert torch.isfinite(loss)
        opt.zero_grad()
        (loss / size).backward()
        opt.step()
        losses.append(log["loss"] / size)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3])


def test_num_masks_must_be_positive():
    with pytest.raises(ValueError, match="model.num_masks=0"):
        tiny_model(num_masks=0)


@pytest.mark.slow
def test_fairseq_run_with_two_masks_logs_all_views(demo_data, tmp_path):
    """Through fairseq-hydra-train: the yaml key works, the loss falls, counts cover both views."""
    import re

    from conftest import REPO, run_train

    log = run_train(REPO / "examples" / "beats_iter1", "tiny", f"task.data={demo_data}",
                    f"checkpoint.save_dir={tmp_path / 'ckpt'}", "model.num_masks=2", "optimization.max_update=40",
                    "common.log_interval=10", "dataset.disable_validation=true")
    inner = re.findall(r"\[train_inner\]\[INFO\] - epoch .*? loss=([0-9.]+).*? code_usage=([0-9.]+)", log)
    assert len(inner) == 4, log[-3000:]
    assert float(inner[-1][0]) < float(inner[0][0]) and float(inner[-1][1]) > 0.5
    # batches of up to 16 clips of 3 s (144 patches, 108 masked per view): the sample size (wpb)
    # counts the masked patches of both views, twice a single mask's 15.2 x 108 per update
    wpb = [float(v) for v in re.findall(r"\[train_inner\]\[INFO\] - epoch .*? wpb=([0-9.]+)", log)]
    assert wpb and all(2 * 14 * 108 <= w <= 2 * 16 * 108 for w in wpb), wpb
