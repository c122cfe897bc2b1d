"""qgfd_hf: QGFD (Query Graph Flow Diffusion) attention for Hugging Face Transformers and diffusion."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="qgfd_hf",
    version="0.1.0",
    description="QGFD attention for pretrained Hugging Face models, and Transformer diffusion models built on it",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The top-level model_cards/ folder ships inside the package as qgfd_hf/model_cards/
    # (qgfd_hf.modelcard_qgfd looks there first, then in a source checkout's model_cards/).
    packages=find_packages(include=["qgfd_hf", "qgfd_hf.*"]) + ["qgfd_hf.model_cards"],
    package_dir={"qgfd_hf.model_cards": "model_cards"},
    package_data={"qgfd_hf.model_cards": ["*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        # The lower bound is the release CI tests (constraints.txt pins it); newer releases are
        # tested with `QGFD_LATEST=1 bash .ci/run` (docs/testing.md).
        "transformers>=5.25",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "datasets>=3.0",
        "numpy",
        "tqdm",
        # `qgfd-hf demo` at runtime: scikit-learn ships the 8x8 digits and fits the metrics'
        # classifier; matplotlib draws the training loss PNG; tokenizers builds the text
        # demo's tokenizer offline; pillow writes the sample grid and reads image folders.
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "pillow>=10",
        "tokenizers>=0.20",
        # audio: reads wav/flac files (its wheels bundle libsndfile; datasets' Audio needs FFmpeg)
        "soundfile>=0.12",
    ],
    # The console script's module sits beside the package: importing `qgfd_hf.cli` directly would
    # run `import qgfd_hf`'s registration, and `qgfd-hf --help` should not wait for torch (qgfd_hf_cli.py).
    py_modules=["qgfd_hf_cli"],
    entry_points={"console_scripts": ["qgfd-hf=qgfd_hf_cli:main"]},
    extras_require={
        # `--report-to tensorboard` (accelerate's tracker); the tests exercise it.
        "tensorboard": ["tensorboard>=2.10"],
        # diffusers' schedulers as samplers (`sample_loop(sampler=<SchedulerMixin>)`); optional.
        "diffusers": ["diffusers>=0.30"],
        # DeepSpeed ZeRO through `accelerate launch --use_deepspeed`; optional, and not in "test" (its first
        # start JIT-compiles a C++ op): tests/test_distributed.py runs its test only where it is installed.
        "deepspeed": ["deepspeed>=0.19"],
        # video files (--modality video --data-dir with .mp4/.avi/.webm): PyAV decodes them (its wheels bundle FFmpeg's libraries)
        "video": ["av>=12"],
        # CI runs the scheduler tests against diffusers and the tracker test against tensorboard;
        # tests/test_fuzz.py draws its bad values with hypothesis; the video file tests decode with av.
        "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "tensorboard>=2.10", "diffusers>=0.30", "av>=12"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
