"""Fine-tuning: label data, metrics, augmentations, classifier init and official parity (fast)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq import metrics as fs_metrics
from fairseq.data import data_utils
from omegaconf import OmegaConf

import beats_fairseq
from beats_fairseq import augment
from beats_fairseq.checkpoint import CheckpointKeyError
from beats_fairseq.cli.convert import fairseq_checkpoint
from beats_fairseq.criterions.beats_classification import BeatsClassificationCriterion
from beats_fairseq.data.label_dataset import LabelledAudioDataset, label_frequency_weights
from beats_fairseq.data.manifest import ManifestError, write_class_map
from beats_fairseq.metrics import accuracy, average_precision_per_class, mean_average_precision
from beats_fairseq.models.beats import BeatsConfig, BeatsModel
from beats_fairseq.models.beats_classifier import layer_lr_scales
from oracle_checks import PARITY_TOL, PROBABILITY_ATOL
from beats_fairseq.tasks.beats_audio_classification import (BeatsAudioClassificationConfig,
                                                            BeatsAudioClassificationTask)

REPO_EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "beats_finetune"
TINY = dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, conv_pos=16, conv_pos_groups=16, dropout=0.0, attention_dropout=0.0)


# --------------------------------------------------------------------------- data
def make_data(tmp_path, labels, sizes=None, classes=3, split="train", ext="lbl", audio=False):
    sizes = sizes or [4800] * len(labels)
    rows = []
    for i, n in enumerate(sizes):
        rows.append(f"{split}_{i}.wav\t{n}")
        if audio:
            rng = np.random.default_rng(i)
            sf.write(str(tmp_path / f"{split}_{i}.wav"), (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
    (tmp_path / f"{split}.tsv").write_text(f"{tmp_path}\n" + "\n".join(rows) + "\n")
    (tmp_path / f"{split}.{ext}").write_text("".join(f"{line}\n" for line in labels))
    write_class_map(tmp_path / "labels.csv", [f"class {c}" for c in range(classes)])
    return tmp_path


def dataset(tmp_path, multilabel=True, **kw):
    return LabelledAudioDataset(str(tmp_path / "train.tsv"), str(tmp_path / "train.lbl"), 3, multilabel, **kw)


@pytest.mark.parametrize("labels,multilabel,line,what", [
    (["0", "3"], True, 2, "unknown class id 3"),
    (["0", ""], True, 2, "empty line"),
    (["0"], True, 2, "missing"),
    (["0", "1", "2"], True, 3, "extra line"),
    (["0", "1,2"], False, 2, "single-label task but 2 class ids"),
])
def test_label_file_errors_name_file_and_line(tmp_path, labels, multilabel, line, what):
    make_data(tmp_path, ["0", "1"])
    (tmp_path / "train.lbl").write_text("".join(f"{x}\n" for x in labels))
    with pytest.raises(ManifestError, match=f"train.lbl, line {line}: .*{what}"):
        dataset(tmp_path, multilabel)


def test_labels_follow_dropped_entries_and_collate(tmp_path):
    make_data(tmp_path, ["0", "1,2", "2"], sizes=[4800, 100, 3200], audio=True)
    ds = dataset(tmp_path)  # entry 1 is shorter than one patch row: dropped with its label line
    assert list(ds.labels) == [[0], [2]]
    batch = ds.collater([ds[0], ds[1]])
    assert batch["target"].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    single = dataset(make_data(tmp_path, ["0", "1", "2"], audio=True), multilabel=False)
    batch = single.collater([single[2], single[0]])
    assert batch["target"].dtype == torch.long and batch["target"].tolist() == [2, 0]


def test_weighted_sampling_is_reproducible_and_balanced(tmp_path):
    labels = ["0"] * 80 + ["1"] * 15 + ["2"] * 5
    make_data(tmp_path, labels)
    ds = dataset(tmp_path, multilabel=False, sample_weights="labels", epoch_samples=3000)
    assert not ds.can_reuse_epoch_itr_across_epochs
    np.testing.assert_allclose(label_frequency_weights([[0], [0], [1], [0, 1]], 3), [1 / 3, 1 / 3, 1 / 2, 5 / 6])
    with data_utils.numpy_seed(1 + 1):
        a = ds.ordered_indices()
    with data_utils.numpy_seed(1 + 1):
        b = ds.ordered_indices()
    with data_utils.numpy_seed(1 + 2):
        c = ds.ordered_indices()
    assert len(a) == 3000 and np.array_equal(a, b) and not np.array_equal(a, c)
    share = np.bincount([ds.labels[i][0] for i in a], minlength=3) / len(a)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.05)
    unweighted = dataset(tmp_path, multilabel=False)
    assert unweighted.can_reuse_epoch_itr_across_epochs and len(unweighted.ordered_indices()) == 100


# --------------------------------------------------------------------------- metrics
def test_map_masks_classes_without_positives():
    from sklearn.metrics import average_precision_score

    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.6, 0.3, 0.2], [0.1, 0.7, 0.9]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])  # class 2 has no positive
    ap = average_precision_per_class(scores, targets)
    assert np.isnan(ap[2])
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1)])
    value = mean_average_precision(torch.tensor(scores), torch.tensor(targets))
    assert type(value) is float and value == pytest.approx(expected)
    assert mean_average_precision(scores, np.zeros_like(targets)) == 0.0
    assert type(accuracy(scores, np.array([0, 1, 0, 1]))) is float
    assert accuracy(scores, np.array([0, 1, 0, 1])) == 0.75
    assert accuracy(scores, targets) == 0.75  # multi-hot: the top class must be a positive


def test_criterion_gathers_predictions_for_map():
    """mAP over outputs of several batches (or ranks) equals the mAP of the whole set."""
    assert BeatsClassificationCriterion.logging_outputs_can_be_summed() is False
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.random((40, 5)), dtype=torch.float32)
    targets = torch.tensor(rng.random((40, 5)) < 0.3, dtype=torch.float32)
    logs = [{"loss": 1.0, "sample_size": 10, "_predictions": scores[i:i + 10], "_targets": targets[i:i + 10]}
            for i in range(0, 40, 10)]
    with fs_metrics.aggregate(new_root=True) as agg:
        BeatsClassificationCriterion.reduce_metrics(logs[:2])  # e.g. one batch of two ranks
        BeatsClassificationCriterion.reduce_metrics(logs[2:])
        values = agg.get_smoothed_values()
    assert type(values["mAP"]) is float
    assert values["mAP"] == pytest.approx(round(mean_average_precision(scores, targets), 4))
    assert "_predictions" not in values
    with fs_metrics.aggregate(new_root=True) as agg:
        BeatsClassificationCriterion.reduce_metrics([{"loss": 2.0, "sample_size": 4, "correct": 3, "count": 4},
                                                     {"loss": 1.0, "sample_size": 4, "correct": 1, "count": 4}])
        values = agg.get_smoothed_values()
    assert values["accuracy"] == 0.5 and type(values["accuracy"]) is float


# --------------------------------------------------------------------------- augmentations
def clip_rng(batch):
    return augment.ClipRandom(seed=3, update=5, clip_ids=torch.arange(100, 100 + batch), device="cpu")


@pytest.mark.parametrize("per_clip", [False, True])
def test_spec_augment_masks_about_ratio_and_respects_padding(per_clip):
    torch.manual_seed(0)
    fbank = torch.randn(64, 200, 128) + 5.0
    frame_mask = torch.zeros(64, 200, dtype=torch.bool)
    frame_mask[32:, 100:] = True
    out = augment.spec_augment(fbank, 0.3, 0.2, 2, frame_mask, clip_rng(64) if per_clip else None)
    assert out.shape == fbank.shape
    masked = out == 0
    assert masked[32:, 100:].all(dim=-1).sum() == 0  # no time mask on padded frames
    assert masked[32:, :100].all(dim=-1).any()
    time_share = masked.all(dim=2)[:32].float().mean()
    freq_share = masked.all(dim=1).float().mean()
    assert 0.15 < time_share < 0.35 and 0.1 < freq_share < 0.25
    assert torch.equal(out[~masked], fbank[~masked])
    assert torch.equal(augment.spec_augment(fbank, 0.0, 0.0), fbank)


@pytest.mark.parametrize("per_clip", [False, True])
def test_roll_and_mixup(per_clip):
    torch.manual_seed(0)
    source = torch.randn(4, 1000)
    padding = torch.zeros(4, 1000, dtype=torch.bool)
    padding[2:, 600:] = True
    source[padding] = 0.0
    rng = clip_rng(4) if per_clip else None
    rolled = augment.roll(source, padding, rng)
    assert rolled.shape == source.shape and torch.equal(rolled[padding], source[padding])
    for i in range(4):  # a rotation of the valid part
        n = int((~padding[i]).sum())
        assert torch.equal(rolled[i, :n].sort().values, source[i, :n].sort().values)
    target = torch.eye(4)  # one-hot rows: mixing keeps each row summing to 1
    mixed, mask, mixed_target = augment.mixup(source, padding, target, alpha=0.8, rng=rng)
    assert not torch.equal(mixed, source) and not torch.equal(rolled, source)
    assert mixed.shape == source.shape and mixed_target.shape == target.shape
    torch.testing.assert_close(mixed_target.sum(1), target.sum(1))
    assert (mask <= padding).all()  # padded only where both clips are padding
    same = augment.mixup(source, padding, target, alpha=0.0)
    assert same[0] is source and same[2] is target


def tiny_classifier(**kw):
    cfg = OmegaConf.create(dict(_name="beats_classifier", num_classes=3, **TINY, **kw))
    from fairseq.models import build_model

    return build_model(cfg, None)


def test_frozen_encoder_updates_train_the_head_alone_then_everything():
    torch.manual_seed(0)
    model = tiny_classifier(freeze_encoder_updates=2, multilabel=False).train()
    source, target = torch.randn(2, 16000), torch.tensor([0, 2])

    def grads_after_a_step(updates):
        model.zero_grad(set_to_none=True)
        model.set_num_updates(updates)
        logits, _, target_out = model(source, target=target)
        torch.nn.functional.cross_entropy(logits, target_out).backward()
        return {n for n, p in model.named_parameters() if p.grad is not None}

    head = {"head.weight", "head.bias"}
    assert grads_after_a_step(0) == head and grads_after_a_step(1) == head
    assert grads_after_a_step(2) == {n for n, _ in model.named_parameters()}  # from update 2 on: everything
    model.set_num_updates(0)
    with torch.no_grad():  # evaluation is the same model whatever the update
        frozen = model.eval()(source)[0]
        model.set_num_updates(5)
        assert torch.equal(model(source)[0], frozen)


def test_frozen_encoder_under_ddp_needs_the_unused_parameter_search(tmp_path):
    """Without ``find_unused_parameters`` DDP would stop at the second update; the task says why first."""
    import torch.distributed as dist
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel

    from beats_fairseq.tasks.beats_audio_classification import check_frozen_encoder_under_ddp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        frozen = tiny_classifier(freeze_encoder_updates=2)
        with pytest.raises(ValueError, match=r"distributed_training.find_unused_parameters=true"):
            check_frozen_encoder_under_ddp(ModuleProxyWrapper(DistributedDataParallel(frozen)))
        check_frozen_encoder_under_ddp(ModuleProxyWrapper(DistributedDataParallel(frozen, find_unused_parameters=True)))
        check_frozen_encoder_under_ddp(ModuleProxyWrapper(DistributedDataParallel(tiny_classifier())))  # never frozen
        check_frozen_encoder_under_ddp(frozen)  # one process
    finally:
        dist.destroy_process_group()


def test_augmentations_run_only_in_training():
    torch.manual_seed(0)
    model = tiny_classifier(specaug_time_ratio=0.3, specaug_freq_ratio=0.3, mixup_alpha=0.8, roll=True,
                            multilabel=False)
    source, target = torch.randn(4, 16000), torch.tensor([0, 1, 2, 0])
    model.eval()
    with torch.no_grad():
        a, mask, t = model(source, target=target)
        b, _ = model(source)
    assert torch.equal(a, b) and torch.equal(t, target) and mask is None and a.shape == (4, 3)
    model.train()
    with torch.no_grad():
        c, _, mixed = model(source, target=target)
    assert not torch.allclose(c, a) and mixed.dtype == torch.float32 and mixed.shape == (4, 3)


def test_augmentations_are_drawn_per_clip_and_leave_torch_rng_alone():
    """Same (seed, update, clip id): same augmentation in any batch; other clips or ranks differ."""
    model = tiny_classifier(specaug_time_ratio=0.3, specaug_freq_ratio=0.3, mixup_alpha=0.0, roll=True,
                            multilabel=False)
    model.train().set_seed(11)
    model.set_num_updates(7)
    wav = torch.randn(1, 16000).expand(4, -1).contiguous()  # one clip, four times

    def logits(ids):
        with torch.no_grad():
            return model(wav, clip_ids=torch.tensor(ids))[0]

    state = torch.get_rng_state()
    a = logits([0, 1, 2, 3])
    assert torch.equal(torch.get_rng_state(), state)  # dropout's generator is not consumed
    assert all(not torch.equal(a[0], a[i]) for i in (1, 2, 3))  # different clip ids: different draws
    b = logits([3, 2, 1, 0])  # the same clips in another order (another batch or rank)
    torch.testing.assert_close(b, a.flip(0))
    c = logits([4, 5, 6, 7])  # the clips of another rank
    assert not torch.allclose(c, a)
    model.set_num_updates(8)
    assert not torch.allclose(logits([0, 1, 2, 3]), a)  # new update, new draws
    model.set_num_updates(7)
    torch.testing.assert_close(logits([0, 1, 2, 3]), a)  # a resumed run draws the same


def test_layer_decay_scales():
    model = tiny_classifier(layer_decay=0.5)
    scales = layer_lr_scales(model, 0.5)
    assert scales["head.weight"] == 1.0
    assert scales["backbone.encoder.layers.1.fc1.weight"] == 0.5
    assert scales["backbone.encoder.layers.0.fc1.weight"] == 0.25
    assert scales["backbone.patch_embedding.weight"] == 0.125
    params = dict(model.named_parameters())
    assert params["backbone.encoder.layers.0.fc1.weight"].optim_overrides == {"optimizer": {"lr_scale": 0.25}}
    assert not hasattr(params["head.weight"], "optim_overrides")


# --------------------------------------------------------------------------- init from pre-trained
def pretrained_checkpoint(path):
    torch.manual_seed(3)
    model = BeatsModel(BeatsConfig(**TINY, codebook_size=16, codebook_dim=8, label_predictor_layers=1))
    torch.save(fairseq_checkpoint(model, "test"), path)  # as a pre-training run writes it
    return model


def build_task(tmp_path, **task_kw):
    cfg = OmegaConf.structured(BeatsAudioClassificationConfig(data=str(tmp_path), seed=1, **task_kw))
    return BeatsAudioClassificationTask.setup_task(cfg)


def model_cfg(**kw):
    # architecture deliberately different from the checkpoint's: it must come from the checkpoint
    values = dict(_name="beats_classifier", num_classes=0, multilabel=True, encoder_layers=4, encoder_embed_dim=32,
                  encoder_ffn_embed_dim=64, embed_dim=16, encoder_attention_heads=2, conv_pos=16)
    values.update(kw)
    return OmegaConf.create(values)


def test_classifier_initialised_from_beats_checkpoint(tmp_path):
    make_data(tmp_path, ["0", "1"])
    pre = pretrained_checkpoint(tmp_path / "pre.pt")
    task = build_task(tmp_path)
    cfg = model_cfg(pretrained_path=str(tmp_path / "pre.pt"), dropout=0.0, encoder_layerdrop=0.2)
    model = task.build_model(cfg)
    assert cfg.encoder_layers == 2 and cfg.encoder_embed_dim == 64 and cfg.num_classes == 3  # written back
    assert cfg.encoder_layerdrop == 0.2  # fine-tuning settings stay
    assert model.class_names == ["class 0", "class 1", "class 2"] and len(model.class_mids) == 3
    ours, theirs = model.backbone.state_dict(), pre.backbone.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a fine-tuned reload never reads the pre-trained file
    (tmp_path / "pre.pt").unlink()
    task.build_model(cfg, from_checkpoint=True)


def test_classifier_init_is_strict(tmp_path):
    make_data(tmp_path, ["0", "1"])
    pretrained_checkpoint(tmp_path / "pre.pt")
    state = torch.load(tmp_path / "pre.pt", weights_only=True)
    del state["model"]["backbone.encoder.layers.1.fc2.bias"]
    state["model"]["backbone.encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"(?s)missing keys \(1\).*layers.1.fc2.bias.*unexpected.*extra"):
        build_task(tmp_path).build_model(model_cfg(pretrained_path=str(tmp_path / "bad.pt")))
    with pytest.raises(ValueError, match="multilabel"):
        build_task(tmp_path, multilabel=False).build_model(model_cfg())
    with pytest.raises(ValueError, match="num_classes=5"):
        build_task(tmp_path).build_model(model_cfg(num_classes=5))


def test_classifier_initialised_from_official_checkpoint(tmp_path, oracle):
    make_data(tmp_path, ["0", "1"])
    model = build_task(tmp_path).build_model(model_cfg(pretrained_path=str(oracle.dir / "beats_small.pt")))
    official = oracle("beats_small")["model"]
    ours = model.backbone.state_dict()
    assert ours.keys() == official.keys() and all(torch.equal(ours[k], official[k]) for k in ours)
    inputs = oracle("inputs")
    with torch.no_grad():
        feats, _ = model.eval().backbone.extract_features(inputs["source"], inputs["padding_mask"])
    torch.testing.assert_close(feats, oracle("model_outputs")["features"], **PARITY_TOL)


# --------------------------------------------------------------------------- official fine-tuned parity
def test_official_finetuned_probabilities(oracle):
    model = beats_fairseq.load(str(oracle.dir / "beats_small_finetuned.pt"))
    inputs, ref = oracle("inputs"), oracle("finetuned_outputs")
    with torch.no_grad():
        probs, mask = model.extract_features(inputs["source"], inputs["padding_mask"])
        probs_no_mask, none = model.extract_features(inputs["source"])
        logits, _ = model(inputs["source"], inputs["padding_mask"])
        frame_logits, _ = model.patch_logits(inputs["source"], inputs["padding_mask"])
    torch.testing.assert_close(probs, ref["probs"], atol=PROBABILITY_ATOL, rtol=0)
    torch.testing.assert_close(probs_no_mask, ref["probs_no_mask"], atol=PROBABILITY_ATOL, rtol=0)
    torch.testing.assert_close(frame_logits, ref["intermediates"]["frame_logits"], **PARITY_TOL)
    torch.testing.assert_close(model.probabilities(logits), probs)
    assert torch.equal(mask, ref["padding_mask"]) and none is None
    assert model.class_names == [f"/m/oracle_class_{i}" for i in range(5)] and model.cfg.multilabel
    official = model.to_official()
    assert official["label_dict"] == oracle("beats_small_finetuned")["label_dict"]
    assert official["model"].keys() == oracle("beats_small_finetuned")["model"].keys()


# --------------------------------------------------------------------------- band head
def band_head_outputs(head_pooling):
    """(model in eval mode, clip logits, encoder output, patch padding mask, per-clip list of the valid time
    steps of every band ``[(T_b, C)] * bands``) for two clips, the second padded from 9000 samples."""
    torch.manual_seed(0)
    model = tiny_classifier(head_pooling=head_pooling, multilabel=False).eval()
    bands = model.backbone.frequency_bands
    source = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 9000:] = True
    with torch.no_grad():
        logits, patch_mask = model(source, padding)
        x, _ = model.encode(source, padding)
    assert patch_mask[1].any() and not patch_mask[0].any()
    steps = []
    for clip in range(2):
        grid, valid = x[clip].reshape(-1, bands, x.size(-1)), (~patch_mask[clip]).reshape(-1, bands)
        steps.append([grid[valid[:, b], b] for b in range(bands)])
    return model, (source, padding), logits, x, patch_mask, steps


def test_band_head_is_a_linear_head_on_the_per_band_means_over_time_and_skips_padding():
    model, (source, padding), logits, _, _, steps = band_head_outputs("bands")
    weight = model.head.weight.detach().permute(1, 0, 2).reshape(3, -1)  # (classes, bands * dim)
    for clip in range(2):
        band_means = torch.stack([s.mean(0) for s in steps[clip]]).flatten()
        torch.testing.assert_close(logits[clip], weight @ band_means + model.head.bias.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # other weights for one band only: other logits
        model.head.weight[3].normal_()
        assert not torch.allclose(model(source, padding)[0], logits, atol=1e-3)


def test_band_head_export_graph_gives_the_models_probabilities():
    from beats_fairseq.export import OnnxModel

    torch.manual_seed(0)
    model = tiny_classifier(head_pooling="bands", multilabel=False).eval()
    source = torch.randn(2, 16000)
    with torch.no_grad():
        _, probs = OnnxModel(model)(source)
        torch.testing.assert_close(probs, model.extract_features(source)[0])


def test_band_head_has_no_official_layout_and_mean_is_the_official_head():
    with pytest.raises(ValueError, match="head_pooling=bands has no official layout"):
        tiny_classifier(head_pooling="bands").to_official()
    with pytest.raises(ValueError, match="head_pooling=band_stats has no official layout"):
        tiny_classifier(head_pooling="band_stats").to_official()
    assert set(tiny_classifier().to_official()["model"]) >= {"predictor.weight", "predictor.bias"}
    with pytest.raises(ValueError, match="model.head_pooling='max': choose one of mean, bands, band_stats"):
        tiny_classifier(head_pooling="max")


def test_band_stats_head_reads_each_bands_mean_and_std_over_time_as_the_probe_does():
    from beats_fairseq.probe import pool

    model, (source, padding), logits, x, patch_mask, steps = band_head_outputs("band_stats")
    for clip in range(2):  # by hand: the valid time steps of every band, mean and population std
        feature = torch.cat([torch.stack([s.mean(0) for s in steps[clip]]).flatten(),
                             torch.stack([s.std(0, unbiased=False) for s in steps[clip]]).flatten()])
        expected = model.head.weight.detach() @ feature + model.head.bias.detach()
        torch.testing.assert_close(logits[clip], expected, rtol=1e-5, atol=1e-5)
    # the head's clip feature is the probes' bands feature
    feature = pool(x, patch_mask, "bands", model.backbone.frequency_bands)
    torch.testing.assert_close(logits, feature @ model.head.weight.detach().T + model.head.bias.detach())
    with torch.no_grad():  # the std half matters: other weights on it, other logits
        model.head.weight[:, model.head.weight.size(1) // 2:].normal_()
        assert not torch.allclose(model(source, padding)[0], logits, atol=1e-3)


def test_band_stats_head_trains_exports_and_has_no_patch_logits():
    from beats_fairseq.export import OnnxModel
    from beats_fairseq.tokenizers.teacher import Teacher

    torch.manual_seed(0)
    model = tiny_classifier(head_pooling="band_stats", multilabel=False).train()
    source, target = torch.randn(2, 16000), torch.tensor([0, 2])
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 15000:] = True
    logits, _, _ = model(source, padding, target=target)
    torch.nn.functional.cross_entropy(logits, target).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["head.weight"].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        _, probs = OnnxModel(model)(source)
        torch.testing.assert_close(probs, model.extract_features(source)[0])
    with pytest.raises(ValueError, match="band_stats has no per-patch logits"):
        model.patch_logits(source)
    assert Teacher(model).target == "features"
    with pytest.raises(ValueError, match="with a band_stats head"):
        Teacher(model, target="logits")


# --------------------------------------------------------------------------- task, optimizer, recipes
def test_fit_linear_gives_the_probes_logits_on_raw_features():
    """The folded map equals sklearn's standardised model: softmax = predict_proba (multinomial), the class-1
    logit of a binary model, and zero weights for a class without a training clip."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from beats_fairseq.linear_probe import fit_linear

    rng = np.random.RandomState(0)
    x = 5.0 + 3.0 * rng.randn(60, 6)
    y = rng.randint(0, 3, 60)
    x[:, 0] += 4 * y  # learnable
    probe = fit_linear(x, np.eye(4)[y], multilabel=False)
    weight, bias = probe.folded()
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x), y)
    logits = x @ weight.T + bias
    probs = np.exp(logits[:, :3] - logits[:, :3].max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), reference.predict_proba(scaler.transform(x)),
                               atol=1e-6)
    np.testing.assert_allclose(probe.logits(x)[:, :3], logits[:, :3], atol=1e-8)  # standardised = folded
    assert not weight[3].any() and bias[3] < bias[:3].min()  # class 3: no training clip
    binary = y % 2
    weight, bias = fit_linear(x, np.eye(2)[binary], multilabel=False).folded()
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x), binary)
    np.testing.assert_allclose((x @ weight.T + bias) @ [-1.0, 1.0], reference.decision_function(scaler.transform(x)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="exactly one class per clip"):
        fit_linear(x, np.ones((60, 2)), multilabel=False)
    multi = np.eye(4)[y] + np.eye(4)[(y + 1) % 3]  # two classes per clip, class 3 never
    probe = fit_linear(x, multi, multilabel=True)
    weight, bias = probe.folded()
    np.testing.assert_allclose((x @ weight.T + bias)[:, :3], probe.logits(x)[:, :3], atol=1e-8)
    assert not weight[3].any() and probe.logits(x)[:, 3].max() == -1e9


def probe_initialised(demo_data, head_pooling):
    task = build_task(demo_data, multilabel=False, max_sample_size=48000)
    model = task.build_model(model_cfg(multilabel=False, encoder_layers=2, head_pooling=head_pooling,
                                       head_init="probe"))
    task.load_dataset("train")
    return task, model


@pytest.mark.parametrize("head_pooling", ["band_stats", "mean"])
def test_head_init_probe_starts_the_head_as_the_linear_probe_of_a_fresh_run(demo_data, head_pooling):
    from beats_fairseq.evaluation import read_split
    from beats_fairseq.linear_probe import fit_linear
    from beats_fairseq.probe import clip_features

    torch.manual_seed(0)
    task, model = probe_initialised(demo_data, head_pooling=head_pooling)
    before = model.head.weight.detach().clone()
    task.begin_epoch(1, model)  # a fresh run: before update 1
    assert model.training and not torch.equal(model.head.weight, before)
    manifest = str(demo_data / "train.tsv")
    split = read_split(manifest, str(demo_data / "train.lbl"), 6, False)
    features = clip_features(model.backbone.eval(), manifest, pooling="bands" if head_pooling == "band_stats" else "mean")
    weight, bias = fit_linear(features, split.targets(), multilabel=False).folded()  # the probe, as beats-probe computes it
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logits, _ = model.eval()(**batch["net_input"])
    expected = torch.as_tensor(features[batch["id"].numpy()] @ weight.T + bias, dtype=torch.float32)
    torch.testing.assert_close(logits, expected, atol=2e-3, rtol=1e-3)
    assert (logits.argmax(-1) == batch["target"]).float().mean() > 0.45  # the probe fits its training clips (chance 1/6)
    head = model.head.weight.detach().clone()
    model.set_num_updates(8)
    task.begin_epoch(2, model)  # a later epoch, or a resumed run: the head is the checkpoint's
    assert torch.equal(model.head.weight, head)


def test_head_init_probe_needs_a_head_of_a_clip_feature():
    with pytest.raises(ValueError, match="head_init=probe needs model.head_pooling band_stats or mean"):
        tiny_classifier(head_pooling="bands", head_init="probe")
    with pytest.raises(ValueError, match="model.head_init='linear': choose one of random, probe"):
        tiny_classifier(head_init="linear")


def test_evaluation_batches_keep_every_clip(tmp_path):
    make_data(tmp_path, ["0"] * 60, split="valid")
    task = build_task(tmp_path)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.datasets["valid"], max_sentences=16, required_batch_size_multiple=8)
    assert sum(len(b) for b in itr.frozen_batches) == 60  # fairseq alone would drop 4


def build_recipe_optimizer(model, recipe="tiny.yaml", max_update=100):
    from fairseq.optim import build_optimizer

    import beats_fairseq  # noqa: F401  (registers beats_composite)

    recipe = OmegaConf.load(REPO_EXAMPLES / recipe)
    root = OmegaConf.create({"common": {"tpu": False}, "optimization": {"lr": [1e-3], "max_update": max_update},
                             "optimizer": OmegaConf.to_container(recipe.optimizer)})
    return build_optimizer(root.optimizer, list(model.parameters()))


def test_layer_decay_and_weight_decay_reach_the_composite_optimizer():
    model = tiny_classifier(layer_decay=0.5)
    optimizer = build_recipe_optimizer(model)
    optimizer.lr_scheduler.step_update(20)  # end of the warm-up: every group at its peak
    groups = [(round(g["lr"] / 1e-3, 6), g["weight_decay"], list(g["params"])) for g in optimizer.param_groups]
    assert sorted({lr for lr, _, _ in groups}) == [0.125, 0.25, 0.5, 1.0]
    names = {id(p): n for n, p in model.named_parameters()}
    for lr, wd, params in groups:
        for p in params:  # no weight decay on biases and norms, 0.01 (the recipe's) on the rest
            assert wd == (0.0 if p.dim() <= 1 else 0.01), (names[id(p)], wd)
    head = {names[id(p)]: (lr, wd) for lr, wd, params in groups for p in params if names[id(p)].startswith("head.")}
    assert head == {"head.weight": (1.0, 0.01), "head.bias": (1.0, 0.0)}
    assert sum(len(params) for _, _, params in groups) == len(list(model.parameters()))

    # decay_norms_and_biases=true: one weight decay for everything, a fresh optimizer's groups
    everything = build_recipe_optimizer(tiny_classifier(layer_decay=0.5, decay_norms_and_biases=True))
    groups = list(everything.param_groups)
    assert {g["weight_decay"] for g in groups} == {0.01} and len(groups) == 4


def test_cosine_warmup_as_long_as_the_run_is_a_clear_error():
    with pytest.raises(ValueError, match=r"warmup_updates=20 equals its max_update=20"):
        build_recipe_optimizer(tiny_classifier(layer_decay=0.5), max_update=20)  # fairseq: ZeroDivisionError
    build_recipe_optimizer(tiny_classifier(layer_decay=0.5), max_update=10)  # ends inside the warm-up: fine


@pytest.mark.parametrize("name", ["tiny", "small", "small_few_labels", "as2m", "as20k", "esc50", "spcv2"])
def test_recipes_use_known_keys(name):
    from dataclasses import fields

    from beats_fairseq.models.beats_classifier import BeatsClassifierConfig
    from beats_fairseq.modules.backbone import ARCH_FIELDS
    from beats_fairseq.tasks.audio_task import RESUME_FIELDS

    cfg = OmegaConf.load(REPO_EXAMPLES / f"{name}.yaml")
    # every fine-tuning setting; no architecture (it comes from model.pretrained_path)
    assert set(cfg.model) - {"_name"} == {f.name for f in fields(BeatsClassifierConfig)} - {"_name", *ARCH_FIELDS}
    assert set(cfg.task) - {"_name"} == ({f.name for f in fields(BeatsAudioClassificationConfig)}
                                         - {"_name", "seed", *RESUME_FIELDS})
    assert cfg.task._name == "beats_audio_classification" and cfg.criterion._name == "beats_classification"
    assert cfg.dataset.required_batch_size_multiple == 1 and cfg.common.all_gather_list_size >= 1 << 20
    metric = "mAP" if cfg.task.multilabel else "accuracy"
    assert cfg.checkpoint.best_checkpoint_metric == metric and cfg.checkpoint.maximize_best_checkpoint_metric


def test_fp16_training_keeps_the_per_layer_groups_and_flattening_is_a_clear_error():
    """fairseq's fp16 flattens all parameters into one unless ``fp16_no_flatten_grads``: the recipes set it."""
    from fairseq.dataclass.configs import CommonConfig, DistributedTrainingConfig
    from fairseq.optim import build_optimizer as fairseq_build_optimizer
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    recipe = OmegaConf.load(REPO_EXAMPLES / "small.yaml")
    assert recipe.common.fp16_no_flatten_grads is True
    root = OmegaConf.create({  # what fairseq's Trainer builds under common.fp16 with the recipe's values
        "common": OmegaConf.merge(OmegaConf.structured(CommonConfig),
                                  {"fp16": True, "fp16_no_flatten_grads": recipe.common.fp16_no_flatten_grads}),
        "distributed_training": OmegaConf.structured(DistributedTrainingConfig),
        "optimization": {"lr": [1e-3], "max_update": 100, "update_freq": [1]},
        "optimizer": OmegaConf.to_container(recipe.optimizer)})
    params = list(tiny_classifier(layer_decay=0.5).half().parameters())
    optimizer = FP16Optimizer.build_optimizer(root, params)
    optimizer.fp32_optimizer.lr_scheduler.step_update(20)  # end of the warm-up
    lrs = sorted({round(g["lr"] / 1e-3, 6) for g in optimizer.fp32_optimizer.param_groups})
    assert len(lrs) == 4 and lrs[0] < lrs[-1]  # the layer-wise LRs survive (2 layers: 4 groups)

    # what fp16 with flattening hands the optimizer (fairseq builds it on CUDA only): one fp32 parameter
    flat = torch.nn.Parameter(torch.cat([p.data.float().view(-1) for p in params]))
    with pytest.raises(ValueError, match=r"common.fp16_no_flatten_grads=true"):
        fairseq_build_optimizer(root.optimizer, [flat])


def test_head_init_probe_with_bfloat16_weights(demo_data):
    """Under ``common.bf16`` the model's weights are bfloat16: the probe is fit on the features of an
    autocast encoder and written into the bfloat16 head, which then classifies as the float32 one does."""
    import copy

    torch.manual_seed(0)
    task, model = probe_initialised(demo_data, head_pooling="band_stats")
    reference = copy.deepcopy(model)
    task.begin_epoch(1, reference)
    model = model.bfloat16()
    task.begin_epoch(1, model)
    assert model.head.weight.dtype == torch.bfloat16 and model.training
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        expected, _ = reference.eval()(**batch["net_input"])
        logits, _ = model.eval()(batch["net_input"]["source"].bfloat16(), batch["net_input"]["padding_mask"])
    predictions = logits.float().argmax(-1)
    assert (predictions == batch["target"]).float().mean() > 0.45  # chance 1/6
    assert (predictions == expected.argmax(-1)).float().mean() > 0.8
