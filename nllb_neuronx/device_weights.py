"""A model's weights on the device: the checkpoint's tensors, read one at a time, checked against config.json, cast
to the amp dtype (or quantized to int8 with their scales, `quantize.py`), sharded per rank (`sharding.py`) and
uploaded; plus the sinusoidal positions table. Programs take them as parameters by name (`DeviceWeights` is that
mapping), never as constants.

    check_complete(checkpoint, config)                         # before any device work: names what is missing
    weights = DeviceWeights.upload(runtime, checkpoint, shapes)
    weights["shared.weight"], weights[POSITIONS]               # DeviceTensors, one buffer per rank
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping

import numpy as np

from hlo.runtime import DeviceTensor, PerRank

from nllb_neuronx import quantize, sharding
from nllb_neuronx.config import ModelConfig
from nllb_neuronx.program_spec import ProgramShapes

POSITIONS = "positions"  # the parameter name of the sinusoidal positions table


def check_complete(checkpoint, config: ModelConfig) -> None:
    """A ValueError naming the tensors the model needs that the checkpoint lacks (the first ten, then a count)."""
    missing = [s.name for s in sharding.all_weights(config) if not checkpoint.has(s.name)]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"checkpoint {checkpoint.path} is incomplete: missing {shown}")


class DeviceWeights(Mapping[str, DeviceTensor]):
    """The uploaded weights by parameter name (checkpoint tensor names, and `POSITIONS`)."""

    def __init__(self, tensors: dict[str, DeviceTensor]):
        self._tensors = tensors

    @classmethod
    def upload(cls, runtime, checkpoint, shapes: ProgramShapes) -> "DeviceWeights":
        """Stream the checkpoint's tensors to the device one at a time (a tensor's host copy is dropped before the
        next is read), each checked against the shape config.json implies."""
        config, layout, dtype = shapes.model, shapes.layout, shapes.dtype.numpy
        tensors = {}
        for spec in sharding.all_weights(config):
            tensor = checkpoint.get(spec.name)
            expected = sharding.hf_shape(spec, config)
            if tensor.shape != expected:
                raise ValueError(f"checkpoint tensor {spec.name} has shape {list(tensor.shape)}, "
                                 f"config.json implies {list(expected)}")
            if quantize.is_quantized(spec, shapes.compile.quantization):  # s8 and its scales, made before sharding
                tensor, scale = quantize.quantize_rows(tensor)
                scales = sharding.shard(quantize.scale_spec(spec), scale, layout)
                tensors[quantize.scale_name(spec.name)] = runtime.put(PerRank(scales))
                parts = sharding.shard(spec, tensor, layout)
            else:
                parts = [p.astype(dtype, copy=False) for p in sharding.shard(spec, tensor, layout)]
            tensors[spec.name] = runtime.put(PerRank(parts))
            del tensor, parts
        tensors[POSITIONS] = runtime.put(sinusoidal_positions(shapes.position_rows, config.d_model,
                                                              config.pad_token_id))
        return cls(tensors)

    def __getitem__(self, name: str) -> DeviceTensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def sinusoidal_positions(rows: int, dim: int, pad: int) -> np.ndarray:
    """HF's M2M100 sinusoidal table [rows, dim] f32: sin | cos of position * 10000^(-i / (dim/2 - 1)), row `pad`
    zero. Computed as HF does in f32 (the same f32 frequencies and angles), with exp, sin and cos rounded correctly
    from float64, where torch's f32 functions are sometimes 1 ulp off: entries within 4e-6 of HF's table for 256
    positions, 3e-5 for 1,100 (tests/test_weights.py). numpy rather than HF's function keeps torch and
    transformers out of the process (about 330 MB of RSS and seconds of import)."""
    half = dim // 2
    step = np.float32(math.log(10000) / (half - 1))
    freq = np.exp((np.arange(half, dtype=np.float32) * -step).astype(np.float64)).astype(np.float32)   # [dim/2]
    angle = (np.arange(rows, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float64)          # [rows, dim/2]
    table = np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)
    if dim % 2:
        table = np.pad(table, ((0, 0), (0, 1)))
    table[pad] = 0.0
    return table
