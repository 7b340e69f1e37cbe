"""hlo.nn building blocks against torch's own functions (the semantics the model mirrors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hlo
from hlo import nn


def torch_out(fn, *arrays):
    return fn(*(torch.from_numpy(a) for a in arrays)).numpy()


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("features_first", [False, True])
def test_linear_takes_torch_weight_layout(run, check, rng, with_bias, features_first):
    """nn.linear on rows of tokens [..., in]; nn.linear_columns on the same tokens as columns [in, tokens]."""
    x = rng.standard_normal((2, 3, 5), dtype=np.float32)                  # [B, P, in]
    weight = rng.standard_normal((7, 5), dtype=np.float32)                # [out, in], as torch.nn.Linear
    bias = rng.standard_normal(7, dtype=np.float32)
    want = torch_out(torch.nn.functional.linear, x, weight, *([bias] if with_bias else []))   # [B, P, out]
    inputs = {"x": x, "w": weight, **({"b": bias} if with_bias else {})}
    if features_first:
        inputs["x"] = np.ascontiguousarray(x.reshape(6, 5).T)             # [in, tokens]
        want = want.reshape(6, 7).T                                       # [out, tokens]
    linear = nn.linear_columns if features_first else nn.linear
    got = run(lambda p: linear(p.x, p.w, p.b if with_bias else None), **inputs)
    assert got.shape == want.shape
    check(got, want, atol=1e-5)


def test_linear_rejects_an_in_out_weight():
    spec = hlo.ParamSpec({"x": hlo.f32[2, 5], "w": hlo.f32[5, 7]})
    with pytest.raises(ValueError, match=r"contracting dimensions lhs\[1\]=5 and rhs\[1\]=7 differ"):
        hlo.build("bad", spec, lambda p: nn.linear(p.x, p.w))


@pytest.mark.parametrize("axis", [-1, 0])                                 # rows of tokens, or features first
def test_layer_norm_matches_torch(run, check, rng, axis):
    rows = rng.standard_normal((2, 3, 8), dtype=np.float32) * 3 + 1       # [..., H]
    weight = rng.standard_normal(8, dtype=np.float32)
    bias = rng.standard_normal(8, dtype=np.float32)
    want = torch_out(lambda t, w, b: torch.nn.functional.layer_norm(t, (8,), w, b, 1e-5), rows, weight, bias)
    x = np.ascontiguousarray(np.moveaxis(rows, -1, axis))
    got = run(lambda p: nn.layer_norm(p.x, p.w, p.b, axis=axis), x=x, w=weight, b=bias)
    check(got, np.moveaxis(want, -1, axis), atol=1e-5)


@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_matches_torch(run, check, rng, axis):
    x = rng.standard_normal((4, 6), dtype=np.float32) * 10
    check(run(lambda p: nn.softmax(p.x, axis), x=x), torch_out(lambda t: torch.softmax(t, axis), x), atol=1e-6)


def test_relu(run, check, rng):
    x = rng.standard_normal((3, 4), dtype=np.float32)
    check(run(lambda p: nn.relu(p.x), x=x), np.maximum(x, 0))


@pytest.mark.parametrize("n", [7, 600])     # a triangular dot, and log-step adds past 512
def test_cumsum_both_methods(run, check, rng, n):
    x = rng.integers(0, 5, (2, n)).astype(np.float32)
    check(run(lambda p: nn.cumsum(p.x, 1), x=x), np.cumsum(x, axis=1))
    check(run(lambda p: nn.cumsum(p.x, 0), x=x), np.cumsum(x, axis=0))
