"""The one table of how each weight is laid out and split across tensor-parallel ranks; the only place that slices.

Kinds (Linear weights keep HF's [out, in] layout, so loading needs no transpose: the encoder computes x @ W.T, the
decoder W @ x on features-first activations, the faster form for a decode step's few tokens; see decoder_layer.py):
- column: Q/K/V and fc1, split on the output dimension (heads padded with empty heads when tp does not divide them)
- row: out_proj and fc2, split on the input dimension; the program all-reduces after it, then adds the bias once
- replicated: layer norms, row-parallel biases
- vocab: the shared embedding / LM head [V, H], padded to a multiple of tp and split on V
int8 weights (`quantize.py`) split as their float weights; their per-output-channel scales [out] as a column weight's
bias (column), replicated (row: the output features are not split), or as the vocabulary (LM head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nllb_neuronx.config import ModelConfig


@dataclass(frozen=True)
class Layout:
    """Per-rank sizes that follow from the model and tp."""

    model: ModelConfig
    tp: int

    @property
    def heads_padded(self) -> int:
        return -(-self.model.heads // self.tp) * self.tp

    @property
    def heads_local(self) -> int:
        return self.heads_padded // self.tp

    def ffn_local(self, ffn: int) -> int:
        return -(-ffn // self.tp)

    @property
    def vocab_local(self) -> int:
        return -(-self.model.vocab_size // self.tp)


@dataclass(frozen=True)
class WeightSpec:
    name: str      # canonical HF name: the program parameter and the checkpoint tensor
    kind: str      # column | column_bias | row | replicated | vocab
    split: str     # heads | ffn | none


def _attention(prefix: str) -> list[WeightSpec]:
    return [WeightSpec(f"{prefix}.{p}_proj.weight", "column", "heads") for p in "qkv"] + \
           [WeightSpec(f"{prefix}.{p}_proj.bias", "column_bias", "heads") for p in "qkv"] + \
           [WeightSpec(f"{prefix}.out_proj.weight", "row", "heads"),
            WeightSpec(f"{prefix}.out_proj.bias", "replicated", "none")]


def _norm(name: str) -> list[WeightSpec]:
    return [WeightSpec(f"{name}.weight", "replicated", "none"), WeightSpec(f"{name}.bias", "replicated", "none")]


def _ffn(prefix: str) -> list[WeightSpec]:
    return [WeightSpec(f"{prefix}.fc1.weight", "column", "ffn"), WeightSpec(f"{prefix}.fc1.bias", "column_bias", "ffn"),
            WeightSpec(f"{prefix}.fc2.weight", "row", "ffn"), WeightSpec(f"{prefix}.fc2.bias", "replicated", "none")]


def encoder_layer_weights(i: int) -> list[WeightSpec]:
    p = f"encoder.layers.{i}"
    return _norm(f"{p}.self_attn_layer_norm") + _attention(f"{p}.self_attn") + _norm(f"{p}.final_layer_norm") + _ffn(p)


def decoder_layer_weights(i: int) -> list[WeightSpec]:
    p = f"decoder.layers.{i}"
    return (_norm(f"{p}.self_attn_layer_norm") + _attention(f"{p}.self_attn") + _norm(f"{p}.encoder_attn_layer_norm")
            + _attention(f"{p}.encoder_attn") + _norm(f"{p}.final_layer_norm") + _ffn(p))


def all_weights(model: ModelConfig) -> list[WeightSpec]:
    """Every weight the programs read, in one list."""
    specs = [WeightSpec("shared.weight", "vocab", "none")]
    for i in range(model.encoder_layers):
        specs += encoder_layer_weights(i)
    specs += _norm("encoder.layer_norm")
    for i in range(model.decoder_layers):
        specs += decoder_layer_weights(i)
    return specs + _norm("decoder.layer_norm")


def _pad_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)


def _split_size(spec: WeightSpec, hf_shape: tuple[int, ...], layout: Layout) -> int:
    """The padded full size of the dimension that `spec` splits (a multiple of tp)."""
    if spec.kind == "vocab":
        return layout.vocab_local * layout.tp
    if spec.split == "heads":
        return layout.heads_padded * layout.model.head_dim
    ffn = hf_shape[1] if spec.kind == "row" else hf_shape[0]
    return layout.ffn_local(ffn) * layout.tp


def shard(spec: WeightSpec, tensor: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """The per-rank arrays of one weight (float32, contiguous)."""
    tp = layout.tp
    if spec.kind == "replicated":
        return [tensor] * tp
    size = _split_size(spec, tensor.shape, layout)
    if spec.kind in ("vocab", "column_bias"):                 # [V, H] or [N*D]: split the first dimension
        return np.split(_pad_axis(tensor, 0, size), tp, axis=0)
    axis = 0 if spec.kind == "column" else 1                  # [out, in]; column: split out; row: split in
    return [np.ascontiguousarray(w) for w in np.split(_pad_axis(tensor, axis, size), tp, axis=axis)]


def shard_shape(spec: WeightSpec, hf_shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The per-rank shape that `shard` gives a tensor of `hf_shape`."""
    if spec.kind == "replicated":
        return tuple(hf_shape)
    local = _split_size(spec, hf_shape, layout) // layout.tp
    if spec.kind == "vocab":
        return (local, *hf_shape[1:])                         # [V_local, H], or [V_local]: the LM head's int8 scales
    if spec.kind == "column_bias":
        return (local,)
    return (local, hf_shape[1]) if spec.kind == "column" else (hf_shape[0], local)


def hf_shape(spec: WeightSpec, model: ModelConfig) -> tuple[int, ...]:
    """The checkpoint shape of a weight, from the config alone (so programs can be built before any weight is read)."""
    h, name = model.d_model, spec.name
    ffn = model.encoder_ffn_dim if name.startswith("encoder.") else model.decoder_ffn_dim
    if spec.kind == "vocab":
        return (model.vocab_size, h)
    if name.endswith("fc1.weight"):
        return (ffn, h)
    if name.endswith("fc1.bias"):
        return (ffn,)
    if name.endswith("fc2.weight"):
        return (h, ffn)
    if name.endswith(".weight") and "_proj" in name:
        return (h, h)
    return (h,)
