"""Fixtures for the hlo tests: shared XLA CPU runtimes (one per tp degree) and `run(fn, **inputs)`.

Compiles are cheap (tens of ms) but not free on a 2-core machine, so every test builds small graphs and all tests of a
session share one runtime per tp degree; compiled executables are also cached in the process by `hlo.runtime.xla`.
"""

from __future__ import annotations

import numpy as np
import pytest

import hlo
from hlo.runtime import get_runtime, reserve_cpu_devices

# Ask for the virtual CPU devices before anything starts jax's CPU backend, so tp up to 16 always fits.
reserve_cpu_devices(16)

_RUNTIMES: dict[int, object] = {}


def runtime(tp: int):
    """The session's shared xla-cpu runtime for `tp` ranks."""
    if tp not in _RUNTIMES:
        _RUNTIMES[tp] = get_runtime("xla-cpu", tp_degree=tp)
    return _RUNTIMES[tp]


@pytest.fixture(scope="module")
def rt1():
    return runtime(1)


@pytest.fixture(scope="module")
def runtimes():
    """`runtimes(tp)` -> the shared runtime for tp ranks."""
    return runtime


def run_on(rt, fn, inputs: dict, name: str = "test"):
    """Build `fn` over parameters shaped like the numpy `inputs`, compile it on `rt`, run it, return numpy.

    `fn` gets the parameters as `hlo.Params` (p.x) and returns a Value (-> one array), a list/tuple of Values
    (-> a list of arrays) or a dict (-> a dict of arrays, rank 0's buffers).
    """
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    spec = hlo.ParamSpec({k: hlo.Shape(hlo.dtype_of(a), a.shape) for k, a in arrays.items()})
    kind = {}

    def body(p):
        out = fn(p)
        if isinstance(out, (list, tuple)):
            kind["list"] = len(out)
            return {f"out{i}": v for i, v in enumerate(out)}
        return out

    module = hlo.build(name, spec, body)
    program = rt.compile(module)
    outs = {k: v.numpy() for k, v in program(**arrays).items()}
    if "list" in kind:
        return [outs[f"out{i}"] for i in range(kind["list"])]
    if list(outs) == ["output"]:
        return outs["output"]
    return outs


@pytest.fixture
def run(rt1):
    """run(fn, **inputs) on the shared tp=1 runtime; see `run_on`."""
    def _run(fn, **inputs):
        return run_on(rt1, fn, inputs)
    return _run


def _check(got, want, rtol=None, atol=None, dtype=None):
    got = np.asarray(got)
    want = np.asarray(want)
    expected_dtype = np.dtype(dtype) if dtype is not None else want.dtype
    assert got.dtype == expected_dtype, f"dtype {got.dtype} != {expected_dtype}"
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        if rtol is None:
            rtol = {2: 1e-2, 4: 1e-5, 8: 1e-12}.get(got.dtype.itemsize, 1e-5)
            if got.dtype.name == "bfloat16":
                rtol = 1e-2
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                                   atol=atol if atol is not None else rtol)


@pytest.fixture
def check():
    """check(got, want, rtol=None, atol=None, dtype=None): equal dtype (want's, or `dtype`) and shape, then values
    (exact for integers and pred, allclose with a dtype-sized tolerance for floats)."""
    return _check


@pytest.fixture
def rng():
    return np.random.default_rng(0)
