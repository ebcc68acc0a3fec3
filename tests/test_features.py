"""Frame-level features (beats_fairseq/features.py): column grid, timestamps, masks, chunking."""

import pytest
import soundfile as sf
import torch

from beats_fairseq import load
from beats_fairseq.features import chunk_plan, column_timestamps, frame_features, num_columns
from beats_fairseq.modules import fbank as fb


@pytest.fixture(scope="module")
def small(oracle):
    return load(str(oracle.dir / "beats_small.pt"))


class PatchOnly(torch.nn.Module):
    """A stand-in backbone whose output at a patch depends on that patch's samples only
    (fbank + patch embedding, no encoder): chunking must then be exact at any length."""

    def __init__(self, backbone):
        super().__init__()
        self.inner, self.patch_size, self.cfg = backbone, backbone.patch_size, backbone.cfg

    def extract_features(self, source, padding_mask=None, layer=None):
        front = self.inner.frontend(source, padding_mask)
        return front.embeddings, front.padding_mask


def test_timestamps_are_column_centres():
    # column t = frames 16t..16t+15; frame k reads samples [160k, 160k + 400)
    frame_centres = (torch.arange(64, dtype=torch.float64) * 160 + 200) / 16000
    expected = frame_centres.view(4, 16).mean(dim=1)
    assert torch.allclose(column_timestamps(4), expected, atol=1e-12)
    assert column_timestamps(3).tolist() == pytest.approx([0.0875, 0.2475, 0.4075])
    for samples in (2800, 2799 + 2560, 16000, 160000, 321234):
        t = num_columns(samples)
        assert t == fb.num_frames(samples) // 16
        last = column_timestamps(t)[-1].item()
        assert samples / 16000 - 2 * 0.16 <= last <= samples / 16000


def test_chunk_plan_covers_every_column_once_nearest_centre():
    for total, chunk, hop in ((62, 62, 31), (100, 62, 31), (250, 62, 31), (251, 62, 10), (70, 62, 62)):
        plan = chunk_plan(total, chunk, hop)
        assert plan[0][1] == 0 and plan[-1][2] == total
        for (start, lo, hi), nxt in zip(plan, plan[1:] + [None]):
            assert start <= lo < hi <= start + chunk  # kept columns lie inside the chunk
            if nxt is not None:
                assert nxt[1] == hi
        starts = [p[0] for p in plan]
        for start, lo, hi in plan:
            for t in range(lo, hi):  # no other chunk holding t has a nearer centre
                mine = abs(t + 0.5 - (start + chunk / 2))
                others = [abs(t + 0.5 - (s + chunk / 2)) for s in starts if s <= t < s + chunk]
                assert mine <= min(others) + 0.5


def test_one_chunk_equals_unchunked_exactly(real_audio, small):
    wav = torch.cat([real_audio(7.3), real_audio(7.3, first=700)])
    mask = torch.zeros(wav.shape, dtype=torch.bool)
    mask[1, 80000:] = True
    with torch.no_grad():
        feats, patch_mask = small.extract_features(wav, mask)
        for m in (None, mask):
            whole = frame_features(small, wav, m, chunk_seconds=None)
            chunked = frame_features(small, wav, m, chunk_seconds=10.0)
            assert torch.equal(whole.features, chunked.features)
            assert torch.equal(whole.padding_mask, chunked.padding_mask)
    t = num_columns(wav.size(1))
    assert whole.features.shape == (2, t, 64) and whole.timestamps.shape == (t,)
    expected = feats.view(2, t, 8, 64).mean(dim=2)  # same call, same padding rule
    assert torch.equal(whole.features, expected)
    assert whole.padding_mask[0].sum() == 0
    assert whole.padding_mask[1].tolist() == [i >= num_columns(80000) for i in range(t)]
    concat = frame_features(small, wav[:1], reduce="concat")
    assert concat.features.shape == (1, t, 8 * 64)
    assert torch.allclose(concat.features.view(1, t, 8, 64).mean(2), whole.features[:1], atol=1e-6)


def test_chunks_lie_on_the_column_grid(real_audio):
    torch.manual_seed(0)
    from beats_fairseq.modules.backbone import BeatsBackbone, BeatsBackboneConfig

    backbone = BeatsBackbone(BeatsBackboneConfig(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=32,
                                                encoder_attention_heads=2, embed_dim=16)).eval()
    stand_in = PatchOnly(backbone)
    wav = real_audio(23.1)
    with torch.no_grad():
        whole = frame_features(stand_in, wav, chunk_seconds=None)
        for chunk, hop in ((10.0, None), (3.0, 1.1), (2.0, 2.0)):
            chunked = frame_features(stand_in, wav, chunk_seconds=chunk, hop_seconds=hop)
            assert torch.allclose(chunked.features, whole.features, atol=1e-5, rtol=0), (chunk, hop)
            assert torch.equal(chunked.timestamps, whole.timestamps)


def test_long_audio_chunked_is_close_to_unchunked(real_audio, small):
    wav = real_audio(40.0)
    with torch.no_grad():
        whole = frame_features(small, wav, chunk_seconds=None)
        chunked = frame_features(small, wav, chunk_seconds=10.0, hop_seconds=5.0)
    assert chunked.features.shape == whole.features.shape == (1, num_columns(wav.size(1)), 64)
    # attention sees 10 s instead of 40 s, so they differ; measured on this 2-layer model: cosine 0.989 mean
    cos = torch.nn.functional.cosine_similarity(chunked.features, whole.features, dim=-1)
    assert cos.mean() > 0.95 and cos.min() > 0.8


def test_padded_rows_in_chunks(real_audio, small):
    wav = torch.cat([real_audio(25.0), real_audio(25.0, first=900)])
    mask = torch.zeros(wav.shape, dtype=torch.bool)
    mask[1, 4 * 16000:] = True  # row 1: 4 s of audio, then padding for later chunks
    with torch.no_grad():
        out = frame_features(small, wav, mask, chunk_seconds=3.0)
        alone = frame_features(small, wav[1:, : 4 * 16000], chunk_seconds=3.0)
    valid = num_columns(4 * 16000)
    assert out.padding_mask[1].tolist() == [i >= valid for i in range(out.features.size(1))]
    assert not out.padding_mask[0].any()
    assert torch.isfinite(out.features).all()
    assert (out.features[1, valid + 40:] == 0).all()  # chunks with no valid column are not run
    assert torch.allclose(out.features[1, :10], alone.features[0, :10], atol=1e-4)


def test_bad_arguments(real_audio, small):
    wav = real_audio(12.0)
    with pytest.raises(ValueError, match="reduce"):
        frame_features(small, wav, reduce="max")
    with pytest.raises(ValueError, match="hop_seconds"):
        frame_features(small, wav, chunk_seconds=5.0, hop_seconds=6.0)
    with pytest.raises(ValueError, match="column"):
        frame_features(small, wav[:, :2000])
    with pytest.raises(ValueError, match="chunk_seconds"):
        frame_features(small, wav, chunk_seconds=0.1)


def test_extract_cli_frames_and_timestamps(real_audio, small, oracle, tmp_path):
    import numpy as np

    from beats_fairseq.cli.extract import main

    lengths = {"short.wav": 3.3, "long.wav": 21.7}
    for i, (name, seconds) in enumerate(lengths.items()):
        sf.write(str(tmp_path / name), real_audio(seconds, first=100 * i)[0].numpy(), 16000)
    manifest = tmp_path / "clips.tsv"
    manifest.write_text(f"{tmp_path}\n" + "".join(f"{n}\t{int(s * 16000)}\n" for n, s in lengths.items()))
    out = tmp_path / "out"
    args = [str(oracle.dir / "beats_small.pt"), str(manifest), "--out", str(out), "--frames", "--device", "cpu",
            "--num-workers", "0", "--no-progress", "--quiet", "--chunk-seconds", "8", "--batch-size", "1"]
    assert main(args) == 0
    feats = np.load(out / "frame_features.npy")
    stamps = np.load(out / "frame_timestamps.npy")
    offsets = np.load(out / "frame_offsets.npy")
    columns = [num_columns(int(s * 16000)) for s in lengths.values()]
    assert offsets.tolist() == [0, columns[0], columns[0] + columns[1]]
    assert feats.shape == (sum(columns), 64) and stamps.shape == (sum(columns),)
    assert not (out / "patch_features.npy").exists()
    for i, (name, seconds) in enumerate(lengths.items()):
        rows = slice(offsets[i], offsets[i + 1])
        assert np.allclose(stamps[rows], column_timestamps(columns[i]).numpy())
        wav = torch.from_numpy(sf.read(str(tmp_path / name), dtype="float32")[0])[None]
        with torch.no_grad():
            expected = frame_features(small, wav, chunk_seconds=8.0)
        assert np.allclose(feats[rows], expected.features[0].numpy(), atol=1e-5)
    clip = np.load(out / "clip_features.npy")
    assert np.allclose(clip, np.stack([feats[offsets[i]: offsets[i + 1]].mean(0) for i in range(2)]), atol=1e-5)
    header = (out / "index.tsv").read_text().splitlines()[0].split("\t")
    assert header[-2:] == ["frame_offset", "num_frames"]
    assert main(args + ["--overwrite", "--chunk-seconds", "0.1"]) == 1  # shorter than one column


def test_long_audio_memory_benchmark_smoke(tmp_path):
    """benchmarks/long_audio_memory.py runs, checks its timestamps and writes its JSON (tiny model)."""
    import importlib.util
    import json

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("long_audio_memory", REPO / "benchmarks" / "long_audio_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "memory.json"
    result = bench.main(["--tiny", "--minutes", "0.4", "--chunk-seconds", "5", "--threads", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["columns"] == num_columns(24 * 16000) == data["feature_shape"][1]
    assert data["peak_rss_mb"] >= data["peak_rss_mb_before_features"] > 0
    assert data["last_timestamp_s"] == result["last_timestamp_s"] == pytest.approx(column_timestamps(149)[-1].item())
