"""int8 weights on the host: which weights are stored s8, their scale parameters, the load-time quantization (numpy),
and which HLO form a backend's programs compute them in.

Quantization is transformers-neuronx's (`quantize.py::maybe_quantize_weights`): per output channel, symmetric absmax,
`scale = amax(|W|, over in-features) / 127`, `W_q = clip(round(W / scale), -128, 127)` as int8, scales [out] f32.
It runs on the whole checkpoint tensor, before sharding: a column-parallel weight's scales are then sharded with its
rows, a row-parallel weight's (out_proj, fc2: the output features are not split) are the same on every rank.

Quantized: every encoder and decoder linear (self- and cross-attention q/k/v/out projections, fc1, fc2), and with
`QuantizationConfig.quantize_lm_head` the shared embedding / LM head (one scale per vocabulary row: the embedding
lookup multiplies a row by its scale). Layer norms and biases stay in the amp dtype.

Forms (`hlo.quant`): Neuron (and every backend but XLA CPU, and programs built before a backend is chosen, e.g. for
`export-hlo`) get transformers-neuronx's `dequant_dot`; XLA CPU gets `int8_dot` (s8 x s8 -> s32 with per-token
activation scales, as CTranslate2), which measured fastest there: benchmarks/RESULTS.md, "int8 weights".
"""

from __future__ import annotations

import numpy as np

from hlo.quant import DEQUANT_DOT, INT8_DOT, S8_MAX

from nllb_neuronx.config import QuantizationConfig
from nllb_neuronx.sharding import WeightSpec

SCALE_SUFFIX = "_scale"
_ROWS_PER_BLOCK = 4096   # quantized in blocks of rows: temporaries of 16 MB (1,024 in-features), not of the 1 GB LM head


def scale_name(weight_name: str) -> str:
    """The program parameter of a quantized weight's per-output-channel scales: "<weight name>_scale"."""
    return weight_name + SCALE_SUFFIX


def is_quantized(spec: WeightSpec, quantization: QuantizationConfig | None) -> bool:
    """Whether weight `spec` is stored s8 under `quantization`: linears' weights, and the LM head if asked."""
    if quantization is None:
        return False
    if spec.kind == "vocab":
        return quantization.quantize_lm_head
    return spec.kind in ("column", "row") and spec.name.endswith(".weight")


def scale_spec(spec: WeightSpec) -> WeightSpec:
    """How a quantized weight's scales [out] are split: with the rows of a column-parallel weight or of the LM head,
    the same on every rank for a row-parallel one (its output features are not split)."""
    kind = {"column": "column_bias", "row": "replicated", "vocab": "vocab"}[spec.kind]
    return WeightSpec(scale_name(spec.name), kind, spec.split)


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (output channel) symmetric int8 of a float [out, in] weight: (W_q int8 [out, in], scale f32 [out]) with
    W ~= W_q * scale[:, None]. An all-zero row gets scale 1 (and zeros): transformers-neuronx would divide by 0."""
    out = weight.shape[0]
    weight_q = np.empty(weight.shape, np.int8)
    scale = np.empty(out, np.float32)
    for start in range(0, out, _ROWS_PER_BLOCK):
        block = np.asarray(weight[start:start + _ROWS_PER_BLOCK], np.float32)
        amax = np.maximum(block.max(axis=1), -block.min(axis=1))                    # |W| max, without an |W| copy
        s = np.where(amax > 0, amax / np.float32(S8_MAX), np.float32(1.0)).astype(np.float32)
        scaled = block / s[:, None]
        np.rint(scaled, out=scaled)
        np.clip(scaled, -128, 127, out=scaled)
        weight_q[start:start + len(block)] = scaled
        scale[start:start + len(block)] = s
    return weight_q, scale


def form_for_backend(backend: str | None) -> str:
    """The `hlo.quant` form the programs of `backend` compute quantized linears in."""
    return INT8_DOT if backend == "xla-cpu" else DEQUANT_DOT
