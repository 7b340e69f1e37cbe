from setuptools import find_packages, setup

setup(
    name="nllb_neuronx",
    version="0.1.0",
    description="Meta's NLLB-200 / M2M100 translation models as tensor-parallel, KV-cached HLO programs "
                "for AWS Trainium/Inferentia, runnable on XLA CPU/GPU.",
    packages=find_packages(include=["hlo", "hlo.*", "nllb_neuronx", "nllb_neuronx.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "torch==2.13.0",  # exactly: the CPU wheel is on local disk; an unpinned torch pulls a multi-GB CUDA build
        "transformers>=5.0,<6",
        "tokenizers",
        "safetensors>=0.8",  # its numpy reader handles bf16
        "ml_dtypes",  # bfloat16 for numpy (safetensors' numpy reader of bf16 checkpoints); comes with jax
        "sentencepiece",
        "protobuf>=4.21",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest"],
        "bench": ["ctranslate2", "matplotlib"],
        # The real Neuron packages come from AWS's index (see README: Running on trn1/inf2); PyPI has placeholders.
        "neuron": ["neuronx-cc", "torch-neuronx", "libneuronxla"],
        "ray": ["ray[data]>=2.51"],  # nllb_neuronx.ray, `translate --ray`: ActorPoolStrategy(size=), explicit resources=
    },
    entry_points={"console_scripts": ["nllb-neuronx=nllb_neuronx.cli:main"]},
)
