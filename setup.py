from setuptools import find_packages, setup

# jax/jaxlib: the range the Neuron SDKs' PJRT plugin supports (SDK 2.27-2.33: jax 0.7.0-0.10.0; SDK 2.34:
# 0.10.0-0.11.2), as far as hlo/runtime/_jaxlib.py has shims for: CI runs the suite on 0.10.2 and the hlo tests and
# greedy parity on 0.7.2. torch is not needed for greedy decoding from safetensors, so it is an extra: torch-neuronx
# on inf2/trn1 brings its own torch (2.9), which a pin here would fight.
JAX = ">=0.7.0,<0.11"

setup(
    name="nllb_neuronx",
    version="0.1.0",
    description="Meta's NLLB-200 / M2M100 translation models as tensor-parallel, KV-cached HLO programs "
                "for AWS Trainium/Inferentia, runnable on XLA CPU/GPU.",
    packages=find_packages(include=["hlo", "hlo.*", "nllb_neuronx", "nllb_neuronx.*"]),
    python_requires=">=3.10",
    install_requires=[
        f"jax{JAX}",
        f"jaxlib{JAX}",
        "transformers>=5.0,<6",  # the tokenizers (text in, text out); its models need torch, which is an extra
        "tokenizers",
        "sentencepiece",
        "safetensors>=0.8",  # its numpy reader handles bf16
        "ml_dtypes",  # bfloat16 for numpy (safetensors' numpy reader of bf16 checkpoints); comes with jax
        "protobuf>=4.21",
        "numpy",
        "tqdm",
    ],
    extras_require={
        # HF generate() through the adapter (beam search, logits processors), pytorch_model.bin checkpoints, and
        # the demo's reference model. Unpinned: any torch transformers 5 supports (torch-neuronx's 2.9 included).
        "hf": ["torch>=2.4"],
        # the tests start the real server and a local Ray cluster
        "test": ["torch>=2.4", "pytest", "httpx", "starlette", "uvicorn", "prometheus-client", "ray[data,serve]>=2.51"],
        "serve": ["starlette", "uvicorn", "prometheus-client"],
        "ray": ["ray[data,serve]>=2.51", "starlette", "uvicorn", "prometheus-client"],  # Ray Data; serve --ray
        "bench": ["ctranslate2", "matplotlib"],
    },
    entry_points={"console_scripts": ["nllb-neuronx=nllb_neuronx.cli:main"]},
)
