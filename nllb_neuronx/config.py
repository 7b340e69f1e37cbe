"""Configs: the model's shape (from the HF checkpoint) and how to compile it (batch, buckets, tp, amp, backend).

Dimension letters used across the package: B batch, S source length, T target length (cache), P new target tokens in
one call, H d_model, N heads, D head dim, F ffn, V vocab, L layers; `_local` marks a per-rank size.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields

AMP_DTYPES = ("f32", "bf16", "f16")
TP_DEGREES = (1, 2, 4, 8, 16, 24, 32)  # 24: all NeuronCores of an inf2.48xlarge
MAX_TOP_K_LIMIT = 8192  # half of Neuron's 16,384 sort/TopK limit: each sorted tile must keep fewer than it holds
MAX_DECODE_UNROLL = 16  # each unrolled step is a whole decoder in the program: compile time and size grow with it


@dataclass(frozen=True)
class ModelConfig:
    """The M2M100/NLLB architecture, read from an HF `config.json`."""

    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    pad_token_id: int
    eos_token_id: int
    decoder_start_token_id: int
    scale_embedding: bool = True
    max_position_embeddings: int = 1024
    activation_function: str = "relu"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.encoder_attention_heads != self.decoder_attention_heads:
            raise ValueError("model config: encoder and decoder head counts differ; not supported yet")
        if self.d_model % self.decoder_attention_heads:
            raise ValueError(f"model config: d_model {self.d_model} is not divisible by "
                             f"{self.decoder_attention_heads} heads")
        if self.activation_function != "relu":
            raise ValueError(f"model config: activation {self.activation_function!r} is not supported yet "
                             "(M2M100/NLLB use relu)")

    @property
    def heads(self) -> int:
        return self.decoder_attention_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @classmethod
    def from_hf(cls, hf_config) -> "ModelConfig":
        """From a `transformers` config object or its dict."""
        c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        model_type = c.get("model_type")
        if model_type != "m2m_100":
            raise ValueError(f"model_type {model_type!r} is not supported yet: nllb_neuronx runs M2M100/NLLB "
                             "checkpoints (model_type 'm2m_100'), such as facebook/nllb-200-distilled-600M")
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.default is MISSING and c.get(f.name) is None]
        if missing:
            raise ValueError(f"config.json lacks {missing}")
        return cls(**{n: c[n] for n in names if n in c and c[n] is not None})


QUANT_DTYPES = ("s8",)


@dataclass(frozen=True)
class QuantizationConfig:
    """int8 weight storage as transformers-neuronx offers it (`QuantizationConfig(quant_dtype="s8",
    dequant_dtype=...)`): each linear's weight stored s8 with one f32 scale per output channel (symmetric absmax,
    made on the host at load time, `quantize.py`), dequantized in the program. `dequant_dtype` must be the amp dtype
    (transformers-neuronx: "amp type must match dequant type"); None takes the amp. `quantize_lm_head`: the shared
    embedding / LM head too (transformers-neuronx leaves it in the amp dtype; on XLA CPU it is about 60% of the bytes a
    decode step reads, and int8 measured faster: benchmarks/RESULTS.md, "int8 weights")."""

    quant_dtype: str = "s8"
    dequant_dtype: str | None = None
    quantize_lm_head: bool = True

    def __post_init__(self):
        if self.quant_dtype not in QUANT_DTYPES:
            raise ValueError(f"quant_dtype must be one of {QUANT_DTYPES}, got {self.quant_dtype!r} "
                             "(transformers-neuronx's f8e4m3fn is not supported here)")
        if self.dequant_dtype is not None and self.dequant_dtype not in AMP_DTYPES:
            raise ValueError(f"dequant_dtype must be one of {AMP_DTYPES} (or None: the amp), "
                             f"got {self.dequant_dtype!r}")
        if not isinstance(self.quantize_lm_head, bool):
            raise ValueError(f"quantize_lm_head must be True or False, got {self.quantize_lm_head!r}")

    @classmethod
    def of(cls, value) -> "QuantizationConfig | None":
        """None, a QuantizationConfig, or its quant_dtype alone ("s8")."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(quant_dtype=value)
        raise ValueError(f"quantization must be None, a QuantizationConfig or one of {QUANT_DTYPES}, got {value!r}")


def _buckets(name: str, values) -> tuple[int, ...]:
    values = tuple(sorted({int(v) for v in values}))
    if not values or values[0] < 1:
        raise ValueError(f"{name} must be a non-empty list of positive lengths, got {values}")
    return values


@dataclass(frozen=True)
class CompileConfig:
    """What to compile: fixed shapes and parallelism. Validated here, once."""

    batch_size: int = 1
    tp_degree: int = 1
    n_positions: tuple[int, ...] = (64, 128, 256)   # decoder (target) buckets; the cache holds the largest
    encoder_buckets: tuple[int, ...] = (32, 64, 128, 256)
    amp: str = "f32"
    backend: str | None = None
    compiled_dir: str | None = None                 # compiled artifacts to load from and store into
    max_top_k: int = 256                            # sampling draws among this many most likely tokens (NxDI's 256)
    decode_unroll: int = 1                          # greedy steps per decoder call in sample() (1: one per call)
    quantization: QuantizationConfig | None = None  # int8 weights (None: every weight in the amp dtype)

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.tp_degree not in TP_DEGREES:
            raise ValueError(f"tp_degree must be one of {TP_DEGREES}, got {self.tp_degree!r}")
        if not isinstance(self.max_top_k, int) or not 1 <= self.max_top_k <= MAX_TOP_K_LIMIT:
            raise ValueError(f"max_top_k must be an integer in [1, {MAX_TOP_K_LIMIT}], got {self.max_top_k!r}")
        if not isinstance(self.decode_unroll, int) or not 1 <= self.decode_unroll <= MAX_DECODE_UNROLL:
            raise ValueError(f"decode_unroll must be an integer in [1, {MAX_DECODE_UNROLL}] (greedy decode steps per "
                             f"decoder call; 1: one per call), got {self.decode_unroll!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {AMP_DTYPES}, got {self.amp!r}")
        quantization = QuantizationConfig.of(self.quantization)
        if quantization is not None and quantization.dequant_dtype not in (None, self.amp):
            raise ValueError(f"quantization dequant_dtype {quantization.dequant_dtype!r} must match amp {self.amp!r} "
                             f"(as transformers-neuronx requires): pass dequant_dtype={self.amp!r} or "
                             f"amp={quantization.dequant_dtype!r}")
        object.__setattr__(self, "quantization", quantization)
        object.__setattr__(self, "n_positions", _buckets("n_positions", self.n_positions))
        object.__setattr__(self, "encoder_buckets", _buckets("encoder_buckets", self.encoder_buckets))
        backend = self.backend or os.environ.get("NLLB_NEURONX_BACKEND") or None
        from hlo.runtime import BACKENDS
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (or None to choose), got {backend!r}")
        object.__setattr__(self, "backend", backend)

    @property
    def max_target_length(self) -> int:
        return self.n_positions[-1]

    def encoder_bucket(self, length: int) -> int:
        """The smallest source bucket that holds `length` tokens."""
        bucket = _smallest_holding(self.encoder_buckets, length)
        if bucket is None:
            raise ValueError(
                f"source of {length} tokens is longer than the largest encoder bucket {self.encoder_buckets[-1]} "
                f"(buckets: {list(self.encoder_buckets)}); add a larger one, e.g. "
                f"encoder_buckets={list(self.encoder_buckets) + [_next_pow2(length)]}")
        return bucket

    def decoder_bucket(self, length: int) -> int:
        """The smallest target bucket that holds `length` positions."""
        bucket = _smallest_holding(self.n_positions, length)
        if bucket is None:
            raise ValueError(
                f"a target of {length} tokens exceeds the largest decoder bucket {self.n_positions[-1]} "
                f"(n_positions={list(self.n_positions)}); lower max_new_tokens or add a larger bucket")
        return bucket


def _smallest_holding(buckets: tuple[int, ...], length: int) -> int | None:
    return next((b for b in buckets if length <= b), None)


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
