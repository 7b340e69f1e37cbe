"""The emitted HloModuleProto as XLA reads it, our own HLO text, fingerprints, and the proto schema round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest
from jax._src.lib import xla_client

import hlo
from hlo import bf16, f32, pred, s32
from hlo.proto import HloModuleProto


def xla_text(module: hlo.Module) -> str:
    """XLA parses our serialized proto into its own HloModule and prints it."""
    return xla_client.XlaComputation(module.serialize()).as_hlo_text()


# name -> (spec, fn, aliases, substrings XLA's text must contain)
CASES = {
    "elementwise": (
        dict(a=f32[2, 3], b=f32[2, 3]),
        lambda p: {"y": hlo.tanh(hlo.exp(p.a) + p.b * 2.0 - hlo.log(p.b) / p.a)},
        None,
        ["exponential(a)", "log(b)", "tanh(", "add(", "subtract(", "multiply(", "divide(", "constant(2)",
         "broadcast(", "ENTRY"],
    ),
    "dot": (
        dict(h=f32[4, 8], w=f32[8, 16]),
        lambda p: {"y": hlo.dot(p.h, p.w)},
        None,
        ["f32[4,16]{1,0} dot(h, w)", "lhs_contracting_dims={1}", "rhs_contracting_dims={0}"],
    ),
    "dot_general": (
        dict(a=f32[2, 3, 4], b=f32[2, 4, 5]),
        lambda p: {"y": hlo.dot_general(p.a, p.b, ([2], [1]), ([0], [0]), preferred_element_type=f32)},
        None,
        ["lhs_batch_dims={0}", "rhs_batch_dims={0}", "lhs_contracting_dims={2}", "rhs_contracting_dims={1}",
         "f32[2,3,5]"],
    ),
    "shapes": (
        dict(x=f32[2, 3], v=f32[3]),
        lambda p: {"r": hlo.reshape(p.x, [3, 2]), "t": hlo.transpose(p.x, [1, 0]),
                   "b": hlo.broadcast_in_dim(p.v, (4, 3), [1]), "c": hlo.concatenate([p.x, p.x], 0),
                   "i": hlo.iota(s32[2, 5], 1)},
        None,
        ["f32[3,2]{1,0} reshape(x)", "transpose(x), dimensions={1,0}", "broadcast(v), dimensions={1}",
         "concatenate(x, x), dimensions={0}", "iota(), iota_dimension=1"],
    ),
    "slices": (
        dict(x=f32[4, 6], i=s32[()], u=f32[1, 2]),
        lambda p: {"s": hlo.slice(p.x, [0, 1], [4, 6], [2, 2]), "d": hlo.dynamic_slice(p.x, [p.i, 0], [2, 3]),
                   "u": hlo.dynamic_update_slice(p.x, p.u, [1, p.i]),
                   "p": hlo.pad(p.x, 0.0, [(1, 2, 0), (0, 0, 1)])},
        None,
        ["slice={[0:4:2], [1:6:2]}", "dynamic-slice(x, i, ", "dynamic_slice_sizes={2,3}", "dynamic-update-slice(x, u,",
         "padding=1_2_0x0_0_1", "f32[7,11]"],
    ),
    "gather": (
        dict(x=f32[5, 3], i=s32[2, 2]),
        lambda p: {"g": hlo.take(p.x, p.i, 0)},
        None,
        ["gather(x, i)", "offset_dims={2}", "collapsed_slice_dims={0}", "start_index_map={0}", "index_vector_dim=2",
         "slice_sizes={1,3}", "f32[2,2,3]"],
    ),
    "compare_select_convert": (
        dict(a=f32[3], b=f32[3]),
        lambda p: {"s": hlo.select(hlo.compare(p.a, p.b, "GE"), p.a, p.b), "c": hlo.convert(p.a, bf16),
                   "n": hlo.compare(p.a, p.b, "NE")},
        None,
        ["compare(a, b), direction=GE", "compare(a, b), direction=NE", "select(", "bf16[3]{0} convert(a)"],
    ),
    "constants": (
        dict(),
        lambda p: {"a": hlo.constant(np.array([1, 2, 3], np.int32)), "b": hlo.constant(np.array([0.5, 2], np.float32),
                                                                                       bf16),
                   "c": hlo.constant(np.array([True, False])), "d": hlo.full(-1.5, f32[2, 2])},
        None,
        ["s32[3]{0} constant({1, 2, 3})", "bf16[2]{0} constant({0.5, 2})", "pred[2]{0} constant({1, 0})",
         "constant(-1.5)"],
    ),
    "reduce_and_argmax": (
        dict(x=f32[2, 5]),
        lambda p: dict(zip(["s", "m", "v", "i"], [hlo.reduce_sum(p.x, [1]), hlo.reduce_max(p.x, [0]),
                                                  *hlo.argmax(p.x, 1)])),
        None,
        ["reduce(x, ", "dimensions={1}", "dimensions={0}", "to_apply=add_f32", "to_apply=max_f32",
         "to_apply=min_s32", "s32[2]{0} reduce(", "constant(2147483647)", "constant(-inf)"],
    ),
    "rank_and_custom_call": (
        dict(x=f32[2, 8]),
        lambda p: {"r": hlo.rank() + 1, "k": hlo.custom_call("AwsNeuronTopK", [p.x], f32[2, 3], backend_config="3")},
        None,
        ["replica_rank = s32[] parameter(1)", 'custom_call_target="AwsNeuronTopK"'],   # backend_config: below
    ),
    "sort": (
        dict(k=f32[2, 5], v=s32[2, 5]),
        lambda p: dict(zip(["k", "v"], hlo.sort([p.k, p.v], 1, descending=True))),
        None,
        ["sort(k, v), dimensions={1}, is_stable=true, to_apply=compare", "direction=GT"],
    ),
    "collectives": (
        dict(x=f32[2, 3]),
        lambda p: {"r": hlo.all_reduce(p.x, "add", [[0, 1], [2, 3]]), "g": hlo.all_gather(p.x, 1, 4),
                   "m": hlo.all_reduce(p.x, "max"), "id": hlo.replica_id()},
        None,
        ["all-reduce(x), replica_groups={{0,1},{2,3}}, to_apply=add_f32", "f32[2,12]{1,0} all-gather(x)",
         "dimensions={1}", "replica_groups={}", "to_apply=max_f32", "u32[] replica-id()"],
    ),
    "aliases": (
        dict(cache=f32[4, 8], x=f32[1, 8], pos=s32[()]),
        lambda p: {"logits": hlo.reduce_sum(p.cache, [0]),
                   "cache": hlo.dynamic_update_slice(p.cache, p.x, [p.pos, 0])},
        {"cache": "cache"},
        ["input_output_alias={ {1}: (0, {}, must-alias) }", "dynamic-update-slice(cache, x, pos,"],
    ),
}


@pytest.fixture(scope="module")
def modules():
    return {name: hlo.build(name, hlo.ParamSpec(spec), fn, aliases=aliases)
            for name, (spec, fn, aliases, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_xla_parses_module(modules, case):
    module = modules[case]
    text = xla_text(module)
    assert text.startswith(f"HloModule {case}")
    for want in CASES[case][3]:
        assert want in text, f"{want!r} not in XLA's text:\n{text}"
    # every instruction of ours is in XLA's module under the same name
    for comp in module.computations:
        for v in comp.instructions:
            assert re.search(rf"\b{re.escape(v.name)} = ", text), v.name
    # the parameters and results XLA sees are the ones we declared
    shape = xla_client.XlaComputation(module.serialize()).program_shape()
    assert [str(s).split("{")[0] for s in shape.parameter_shapes()] == [str(s) for _, s in module.params]


def test_xla_keeps_a_custom_calls_backend_config(modules):
    """XLA's own parsed module (its proto, not its text: jax 0.7's printer leaves backend_config out) keeps it."""
    proto = HloModuleProto.FromString(
        xla_client.XlaComputation(modules["rank_and_custom_call"].serialize()).as_serialized_hlo_module_proto())
    calls = [i for c in proto.computations for i in c.instructions if i.opcode == "custom-call"]
    assert [(i.custom_call_target, i.backend_config) for i in calls] == [("AwsNeuronTopK", b"3")]


@pytest.mark.parametrize("case", list(CASES))
def test_own_text_names_each_instruction_with_its_shape(modules, case):
    module = modules[case]
    text = module.to_text()
    assert text.startswith(f"HloModule {case}")
    assert f"ENTRY {module.entry.name} (" in text
    no_layouts = re.sub(r"\]\{[0-9,]*\}", "]", text)  # f32[2,3]{1,0} -> f32[2,3]
    for comp in module.computations:
        for v in comp.instructions:
            pattern = rf"^  (ROOT )?{re.escape(v.name)} = {re.escape(shape_text(v.shape))} {re.escape(v.opcode)}\("
            assert re.search(pattern, no_layouts, re.M), f"no line for {v.name}: {v.shape} {v.opcode} in:\n{text}"
        assert re.search(rf"^  ROOT {re.escape(comp.root.name)} = ", text, re.M)
    # the layout, where printed, is row-major
    for shape_, layout in re.findall(r"\[([0-9,]*)\]\{([0-9,]*)\}", text):
        rank = len(shape_.split(","))
        assert layout == ",".join(str(d) for d in range(rank - 1, -1, -1))


def shape_text(shape) -> str:
    if isinstance(shape, hlo.TupleShape):
        return "(" + ", ".join(shape_text(s) for s in shape.elements) + ")"
    return str(shape)


def test_own_text_details(modules):
    text = modules["aliases"].to_text()
    assert text.splitlines()[0] == "HloModule aliases, input_output_alias={ {1}: (0, {}, must-alias) }"
    text = modules["dot"].to_text()
    assert "dot(f32[4,8]{1,0} h, f32[8,16]{1,0} w), lhs_contracting_dims={1}, rhs_contracting_dims={0}" in text
    text = modules["collectives"].to_text()
    assert "replica_groups={{0,1},{2,3}}" in text and "to_apply=add_f32" in text
    text = modules["slices"].to_text()
    assert "slice={[0:4:2], [1:6:2]}" in text and "padding=1_2x0_0_1" in text
    assert "dynamic_slice_sizes={2,3}" in text
    text = modules["constants"].to_text()
    assert "s32[3] constant({1, 2, 3})" in text and "pred[2] constant({true, false})" in text


@pytest.mark.parametrize("case", list(CASES))
def test_proto_round_trip(modules, case):
    module = modules[case]
    data = module.serialize()
    parsed = HloModuleProto.FromString(data)
    assert parsed == module.to_proto()
    assert parsed.SerializeToString(deterministic=True) == data
    assert parsed.name == case and parsed.entry_computation_name == module.entry.name
    assert [c.name for c in parsed.computations] == [c.name for c in module.computations]
    entry = parsed.computations[-1]
    assert entry.id == parsed.entry_computation_id and entry.root_id == module.entry.root.id
    assert [i.opcode for i in entry.instructions] == [v.opcode for v in module.entry.instructions]


def test_xla_reserialized_proto_reads_back_with_our_schema(modules):
    module = modules["aliases"]
    again = HloModuleProto.FromString(xla_client.XlaComputation(module.serialize()).as_serialized_hlo_module_proto())
    assert again.name == "aliases"
    ours = {i.name: i.opcode for c in module.to_proto().computations for i in c.instructions}
    theirs = {i.name: i.opcode for c in again.computations for i in c.instructions}
    assert theirs == ours
    entry = len(again.input_output_alias.entries)
    assert entry == 1 and list(again.input_output_alias.entries[0].output_shape_index) == [1]


def test_proto_fields():
    module = hlo.build("m", hlo.ParamSpec(c=f32[4], x=f32[4]), lambda p: {"a": p.x * 2, "c": p.c + p.x},
                       aliases={"c": "c"})
    proto = module.to_proto()
    entry = proto.computations[-1]
    assert [p.dimensions for p in proto.host_program_shape.parameters] == [[4], [4]]
    assert list(proto.host_program_shape.parameter_names) == ["c", "x"]
    assert proto.host_program_shape.result.element_type == 13  # TUPLE
    assert [s.element_type for s in proto.host_program_shape.result.tuple_shapes] == [f32.primitive_type] * 2
    params = [i for i in entry.instructions if i.opcode == "parameter"]
    assert [(i.name, i.parameter_number) for i in params] == [("c", 0), ("x", 1)]
    (alias,) = proto.input_output_alias.entries
    assert (list(alias.output_shape_index), alias.parameter_number, alias.kind) == ([1], 0, hlo.proto.MUST_ALIAS)
    ids = [i.id for c in proto.computations for i in c.instructions]
    assert len(ids) == len(set(ids))


def test_dtypes_primitive_types_match_xla(modules):
    text = xla_text(hlo.build("types", hlo.ParamSpec({"p_" + n: d[2] for n, d in hlo.DTYPES.items()}),
                              lambda p: {n: p["p_" + n] for n in hlo.DTYPES}))
    for name in hlo.DTYPES:
        assert f"p_{name} = {name}[2]{{0}} parameter(" in text


def fn_for_fingerprint(p):
    return {"y": hlo.reduce_sum(hlo.dot(p.x, p.w) * 2.0, [1]), "i": hlo.argmax(p.x, 1)[1]}


def test_fingerprint_stable_across_builds():
    a = hlo.build("fp", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 4]), fn_for_fingerprint)
    b = hlo.build("fp", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 4]), fn_for_fingerprint)
    assert a is not b
    assert a.fingerprint() == b.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint())
    assert a.serialize() == b.serialize()
    assert a.to_text() == b.to_text()


def test_fingerprint_changes_with_shape_dtype_name_and_aliases():
    base = hlo.build("fp", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 4]), fn_for_fingerprint).fingerprint()
    others = [
        hlo.build("fp", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 5]), fn_for_fingerprint),
        hlo.build("fp", hlo.ParamSpec(x=f32[1, 3], w=f32[3, 4]), fn_for_fingerprint),
        hlo.build("fp", hlo.ParamSpec(x=bf16[2, 3], w=bf16[3, 4]), fn_for_fingerprint),
        hlo.build("fp2", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 4]), fn_for_fingerprint),
        hlo.build("fp", hlo.ParamSpec(x=f32[2, 3], w=f32[3, 4]),
                  lambda p: {"y": hlo.reduce_sum(hlo.dot(p.x, p.w) * 3.0, [1]), "i": hlo.argmax(p.x, 1)[1]}),
    ]
    prints = [m.fingerprint() for m in others]
    assert base not in prints and len(set(prints)) == len(prints)
    c1 = hlo.build("fa", hlo.ParamSpec(c=f32[4]), lambda p: {"c": p.c + 1.0})
    c2 = hlo.build("fa", hlo.ParamSpec(c=f32[4]), lambda p: {"c": p.c + 1.0}, aliases={"c": "c"})
    assert c1.fingerprint() != c2.fingerprint()


def test_module_metadata():
    m = hlo.build("meta", hlo.ParamSpec(x=f32[2], y=s32[3]), lambda p: {"b": hlo.compare(p.x, 0.0, "GT"), "y": p.y})
    assert m.output_names == ["b", "y"]
    assert m.output_shape("b") == pred[2] and m.output_shape("y") == s32[3]
    assert m.params.names == ["x", "y"] and m.entry is m.computations[-1]
    # a single Value is the output "output"
    single = hlo.build("single", hlo.ParamSpec(x=f32[2]), lambda p: p.x * 2)
    assert single.output_names == ["output"]
