"""`Program.bind`: inputs that stay the same from call to call (weights) checked and converted once."""

from __future__ import annotations

import numpy as np
import pytest

import hlo
from hlo import f32, s32
from hlo.runtime import PerRank, RuntimeInputError


def test_bound_inputs_give_the_unbound_results(runtimes):
    rt = runtimes(2)

    def fn(p):
        return {"y": hlo.dot_general(p.w, p.x, ([1], [0])) + hlo.convert(hlo.rank(), f32), "state": p.state + 1.0}

    module = hlo.build("bind", hlo.ParamSpec(w=f32[3, 4], x=f32[4, 2], state=f32[2]), fn, aliases={"state": "state"})
    program = rt.compile(module)
    rng = np.random.default_rng(0)
    w, x, other = (rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (4, 2), (3, 4)))
    bound = program.bind({"w": rt.put(PerRank([w, 2 * w]))})
    out = bound(x=x, state=np.zeros(2, np.float32))
    want = program(w=PerRank([w, 2 * w]), x=x, state=np.zeros(2, np.float32))
    for r in range(2):
        np.testing.assert_array_equal(out["y"].numpy(r), want["y"].numpy(r))
    assert bound(x=x, state=out["state"])["state"].numpy(1).tolist() == [2.0, 2.0]      # state fed back in place
    np.testing.assert_allclose(bound(x=x, w=other, state=np.zeros(2, np.float32))["y"].numpy(1), other @ x + 1,
                               rtol=1e-6)                                               # a bound input replaced once
    with pytest.raises(RuntimeInputError, match=r"missing inputs \['x'\]"):
        bound(state=np.zeros(2, np.float32))
    with pytest.raises(RuntimeInputError, match="updates in place"):
        program.bind({"state": rt.put(np.zeros(2, np.float32))})
    with pytest.raises(RuntimeInputError, match="unknown inputs"):
        program.bind({"v": rt.put(np.zeros(2, np.float32))})


def test_bound_program_refuses_a_wrong_shape_once(runtimes):
    rt = runtimes(1)
    program = rt.compile(hlo.build("bind_shape", hlo.ParamSpec(w=f32[2], i=s32[2]),
                                   lambda p: {"y": p.w + hlo.convert(p.i, f32)}))
    with pytest.raises(RuntimeInputError, match="'w'"):
        program.bind({"w": rt.put(np.zeros(3, np.float32))})
