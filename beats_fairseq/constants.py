"""Values that the library and the commands share, importable without torch or numpy: the
commands' parsers offer them before they import anything heavy (``beats_fairseq/cli/common.py``)."""

#: The sample rate of every model; audio at other rates is resampled when read.
SAMPLE_RATE = 16000
#: Shortest waveform whose kaldi fbank (25 ms window = 400 samples, 10 ms hop = 160 samples at
#: 16 kHz, snip_edges) has 16 frames, i.e. one row of 16x16 patches: 2800 samples (0.175 s).
MIN_SAMPLES_ONE_PATCH = 400 + 15 * 160
#: How frame features combine the frequency patches of a time column (``features.frame_features``).
REDUCTIONS = ("mean", "concat")
#: Clip features of the probes (``probe.pool``): mean of all patches, their mean and std, or ``bands``:
#: the mean and std over time of each frequency band of patches (8 bands of 16 mel bins), concatenated.
POOLINGS = ("bands", "mean", "mean+std")
#: Probes of frozen features (``probe.fit_probe``): logistic regression on one layer, a learnt weighted sum
#: of all layers with a linear classifier (SUPERB), a one-hidden-layer MLP on one layer (HEAR).
PROBES = ("linear", "weighted-layers", "mlp")
