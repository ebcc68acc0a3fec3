"""Checkpoints written before a model config key was renamed or moved still load."""

import torch

from beats_fairseq import load
from beats_fairseq.cli import convert
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel


def test_tokenizer_checkpoint_with_old_config_keys_loads(tmp_path):
    torch.manual_seed(0)
    cfg = BeatsTokenizerConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                               encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4, codebook_size=24,
                               quant_dim=8, kmeans_init=False, estimator_layers=1, teacher_dim=8)
    model = BeatsTokenizerModel(cfg).eval()
    state = convert.fairseq_checkpoint(model, "test")
    old = state["cfg"]["model"]
    old["quant_n"] = old.pop("codebook_size")  # the names of the first releases
    old.update(distill_weight=0.5, commitment_weight=2.0)  # now criterion.distill_weight / commitment_weight
    path = tmp_path / "old_tokenizer.pt"
    torch.save(state, path)

    loaded = load(str(path))
    assert loaded.cfg.codebook_size == 24 and loaded.codebook_size == 24
    assert "quant_n" not in loaded.cfg and "distill_weight" not in loaded.cfg
    wav = torch.randn(2, 16000)
    assert torch.equal(loaded.extract_labels(wav), model.extract_labels(wav))
