"""beats-fairseq: BEATs pre-training, acoustic tokenizers and fine-tuning for fairseq."""

from setuptools import find_packages, setup

setup(
    name="beats-fairseq",
    version="0.1.0",
    description="BEATs (audio pre-training with acoustic tokenizers) as a fairseq user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # examples/ (the hydra config dirs) is installed as beats_fairseq/examples: one copy of every
    # recipe, found by beats_fairseq.recipes in a checkout and in every kind of install.
    # hydra_plugins (a namespace package, no __init__.py) is listed itself so that setuptools'
    # editable installs put its folder on hydra_plugins.__path__, which Hydra's plugin scan lists.
    packages=find_packages(include=["beats_fairseq", "beats_fairseq.*"])
    + ["beats_fairseq.examples", "hydra_plugins", "hydra_plugins.beats_fairseq_resolver"],
    package_dir={"beats_fairseq.examples": "examples"},
    package_data={"beats_fairseq.examples": ["*/*.yaml", "*/*.py", "*/*.sh"]},
    # Ranges that CI installs at both ends (scripts/test_install.sh); the exact versions of the
    # development environment are in constraints.txt (scripts/setup_env.sh).
    install_requires=[
        "torch>=2.8,<2.12",  # torchaudio (required by fairseq) has no release for torch 2.12+
        "torchaudio>=2.8,<2.12,!=2.11.1",  # 2.11.1 fails to load its library with torch 2.11.0 (undefined symbol)
        "ve-fairseq>=0.12.3,<0.13",  # fairseq main as a wheel; import name fairseq
        "soundfile",
        "numpy",
        "scikit-learn",
        "tqdm",
        "tensorboardX",  # fairseq's common.tensorboard_logdir
        "matplotlib",  # beats-pipeline's report.png, beats-evaluate --plot
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "onnx", "onnxruntime", "onnxscript"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
    },
    entry_points={
        "console_scripts": [
            "beats-make-demo-data=beats_fairseq.cli.make_demo_data:main",
            "beats-predict=beats_fairseq.cli.predict:main",
            "beats-extract=beats_fairseq.cli.extract:main",
            "beats-evaluate=beats_fairseq.cli.evaluate:main",
            "beats-convert=beats_fairseq.cli.convert:main",
            "beats-manifest=beats_fairseq.cli.manifest:main",
            "beats-pipeline=beats_fairseq.cli.pipeline:main",
            "beats-precompute-labels=beats_fairseq.cli.precompute_labels:main",
            "beats-probe=beats_fairseq.cli.probe:main",
            "beats-export=beats_fairseq.cli.export:main",
            "beats-config-dir=beats_fairseq.cli.config_dir:main",
        ]
    },
)
