"""hlo.targets.neuron.check: each rule flags a tiny module that breaks it, and nothing in modules that keep it."""

from __future__ import annotations

import pytest

import hlo
from hlo import bf16, f32, f64, s32, s64, u64
from hlo.builder import current_computation
from hlo.targets import neuron


def violations(spec: dict, fn, num_replicas=None) -> list[neuron.Violation]:
    return neuron.check(hlo.build("m", hlo.ParamSpec(spec), fn), num_replicas)


def rules(spec: dict, fn, num_replicas=None) -> list[str]:
    return [v.rule for v in violations(spec, fn, num_replicas)]


def variadic_argmax(x: hlo.Value):
    """The argmax hlo used to emit: one reduce over (values, indices) with a 4-scalar reducer."""
    def reducer(av, ai, xv, xi):
        take = hlo.compare(xv, av, "GT")
        return hlo.tuple_([hlo.select(take, xv, av), hlo.select(take, xi, ai)])

    comp = current_computation().module.subcomputation(
        "variadic", "argmax", [f32[()], s32[()], f32[()], s32[()]], reducer)
    index = hlo.iota(x.shape.with_dtype(s32), 1)
    out = current_computation().add(
        "reduce", hlo.TupleShape((f32[x.dims[0]], s32[x.dims[0]])),
        (x, index, hlo.constant(float("-inf")), hlo.constant(0)), attrs={"dimensions": [1]}, called=(comp,))
    return hlo.get_tuple_element(out, 1)


def control_flow(opcode: str):
    def fn(p):
        body = current_computation().module.subcomputation(opcode, opcode, [f32[2]], lambda x: x + 1.0)
        return {"y": current_computation().add(opcode, f32[2], (p.x,), called=(body,))}
    return fn


def collective_permute(pairs):
    def fn(p):
        return {"y": current_computation().add("collective-permute", f32[2], (p.x,),
                                               attrs={"source_target_pairs": pairs})}
    return fn


BROKEN = {
    "replica-id": (dict(x=f32[2]), lambda p: {"r": hlo.replica_id()}),
    "variadic-reduce": (dict(x=f32[3, 5]), lambda p: {"i": variadic_argmax(p.x)}),
    "sort-size": (dict(x=f32[2, 16385]), lambda p: {"s": hlo.sort([p.x], 1)[0]}),
    "64-bit": (dict(x=s64[2]), lambda p: {"y": hlo.convert(p.x, s32)}),
    "control-flow": (dict(x=f32[2]), control_flow("while")),
    "integer-dot": (dict(a=s32[2, 3], b=s32[3, 4]), lambda p: {"y": hlo.dot(p.a, p.b)}),
    "collective-groups": (dict(x=f32[2]), lambda p: {"y": hlo.all_reduce(p.x)}),
    "custom-call": (dict(x=f32[2]), lambda p: {"y": hlo.custom_call("MyKernel", [p.x], f32[2])}),
}


@pytest.mark.parametrize("rule", neuron.RULES)
def test_each_rule_flags_its_module(rule):
    spec, fn = BROKEN[rule]
    found = violations(spec, fn)
    assert [v.rule for v in found] == [rule], found
    v = found[0]
    assert v.instruction and v.opcode and v.computation and v.detail
    assert f"[{rule}]" in str(v) and v.instruction in str(v) and v.opcode in str(v)


def test_sort_limit_is_along_the_sort_dimension():
    assert rules(dict(x=f32[2, 16384]), lambda p: {"s": hlo.sort([p.x], 1)[0]}) == []
    assert rules(dict(x=f32[16385, 4]), lambda p: {"s": hlo.sort([p.x], 1)[0]}) == []   # 4 along the dimension
    assert rules(dict(x=f32[16385, 4]), lambda p: {"s": hlo.sort([p.x], 0)[0]}) == ["sort-size"]


@pytest.mark.parametrize("fn, where", [
    (lambda p: {"y": p.x + hlo.convert(hlo.constant(1.5, f64), f32)}, "constant"),
    (lambda p: {"y": hlo.convert(hlo.convert(p.x, u64), f32)}, "convert"),
    (lambda p: {"y": hlo.convert(hlo.argmax(p.x, 0, index_dtype=s64)[1], f32)}, "iota"),
])
def test_64_bit_types_anywhere(fn, where):
    found = violations(dict(x=f32[2]), fn)
    assert found and {v.rule for v in found} == {"64-bit"}
    assert any(v.opcode == where for v in found), found


def test_64_bit_in_a_called_computation():
    found = violations(dict(x=s64[2]), lambda p: {"y": hlo.convert(hlo.reduce_sum(p.x, [0]), s32)})
    assert {v.computation for v in found} > {"m.1"}  # the parameter, the reduce and the reducer's own parameters


def test_conditional_and_collective_permute():
    assert rules(dict(x=f32[2]), control_flow("conditional")) == ["control-flow"]
    assert rules(dict(x=f32[2]), collective_permute([])) == ["collective-groups"]
    assert rules(dict(x=f32[2]), collective_permute([[0, 1], [1, 0]])) == []


def test_collective_groups():
    group = [[0, 1]]
    assert rules(dict(x=f32[2]), lambda p: {"y": hlo.all_gather(p.x, 0, 2)}) == ["collective-groups"]
    assert rules(dict(x=f32[2]), lambda p: {"y": hlo.all_gather(p.x, 0, 2, group), "z": hlo.all_reduce(p.x, "max",
                                                                                                   group)}) == []
    assert rules(dict(x=f32[2]), lambda p: {"y": hlo.all_reduce(p.x, "add", [[0, 4]])}, num_replicas=2) == \
        ["collective-groups"]


def test_allowed_custom_call_and_float_dot():
    assert rules(dict(x=f32[2, 3]), lambda p: {"y": hlo.custom_call("AwsNeuronTopK", [p.x], f32[2, 1], "1"),
                                               "d": hlo.dot(p.x, hlo.transpose(p.x, [1, 0]))}) == []


def test_clean_program_finds_nothing():
    """What the model's programs do: rank parameter, argmax, tiled sort, gathers, collectives with groups, bf16."""
    group = [[0, 1]]

    def fn(p):
        x = hlo.convert(p.x, f32) + hlo.convert(hlo.rank(), f32)
        best, index = hlo.argmax(x, 1)
        tiles = hlo.sort([hlo.reshape(x, [2, 4, 16384 // 4])], 2, descending=True)[0]
        summed = hlo.all_reduce(hlo.reduce_sum(tiles, [2]), "add", group)
        return {"i": index, "b": hlo.all_gather(best, 0, 2, group), "s": summed,
                "t": hlo.take(p.table, hlo.maximum(index, 0))}

    assert violations(dict(x=bf16[2, 16384], table=f32[16384, 3]), fn, num_replicas=2) == []


def test_report_lists_one_violation_a_line():
    found = violations(dict(x=s64[2]), lambda p: {"r": hlo.replica_id(), "y": p.x})
    text = neuron.report(found)
    assert len(text.splitlines()) == len(found) == 3  # the s64 parameter, replica-id, and the s64 output's tuple
    assert "[replica-id]" in text and "[64-bit]" in text
