"""Build-time errors: `hlo.HloBuildError` (a ValueError) whose message names the op and the operand shapes."""

from __future__ import annotations

import numpy as np
import pytest

import hlo
from hlo import f32, pred, s32, u32


def build_error(spec: dict, fn, aliases=None, name="m") -> str:
    """The message of the HloBuildError that building `fn` over `spec` raises."""
    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build(name, hlo.ParamSpec(spec), fn, aliases=aliases)
    assert isinstance(e.value, ValueError)
    return str(e.value)


def test_hlo_build_error_is_a_value_error():
    assert issubclass(hlo.HloBuildError, ValueError)


@pytest.mark.parametrize("b, b_text, reason", [(s32[2, 3], "s32[2,3]", "element types differ"),
                                               (f32[3, 2], "f32[3,2]", "shapes differ")])
def test_add_mismatch_names_both_operands(b, b_text, reason):
    msg = build_error({"a": f32[2, 3], "b": b}, lambda p: hlo.add(p.a, p.b))
    assert msg.startswith("add:")
    assert "f32[2,3]" in msg and b_text in msg
    assert reason in msg


def test_add_dtype_mismatch_with_operator_sugar():
    msg = build_error({"a": f32[2], "b": hlo.bf16[2]}, lambda p: p.a + p.b)
    assert msg.startswith("add:") and "f32[2]" in msg and "bf16[2]" in msg


def test_elementwise_does_not_broadcast_size1_dims_implicitly():
    msg = build_error({"a": f32[2, 3], "b": f32[1, 3]}, lambda p: hlo.multiply(p.a, p.b))
    assert msg.startswith("multiply:") and "f32[2,3]" in msg and "f32[1,3]" in msg


def test_dot_contracting_size_mismatch():
    msg = build_error({"a": f32[2, 3], "b": f32[4, 5]}, lambda p: hlo.dot(p.a, p.b))
    assert msg.startswith("dot:")
    assert "f32[2,3]" in msg and "f32[4,5]" in msg
    assert "lhs[1]=3" in msg and "rhs[0]=4" in msg


def test_dot_general_batch_mismatch_and_out_of_range_dims():
    msg = build_error({"a": f32[2, 3, 4], "b": f32[3, 4, 5]},
                      lambda p: hlo.dot_general(p.a, p.b, ([2], [1]), ([0], [0])))
    assert msg.startswith("dot:") and "batch" in msg and "f32[2,3,4]" in msg and "f32[3,4,5]" in msg
    msg = build_error({"a": f32[2, 3], "b": f32[3, 5]}, lambda p: hlo.dot_general(p.a, p.b, ([2], [0])))
    assert msg.startswith("dot:") and "out of range" in msg
    msg = build_error({"a": f32[2, 3], "b": s32[3, 5]}, lambda p: hlo.dot(p.a, p.b))
    assert msg.startswith("dot:") and "f32[2,3]" in msg and "s32[3,5]" in msg


@pytest.mark.parametrize("perm", [[0, 0], [1], [0, 1, 2], [1, 2]])
def test_bad_transpose_permutation(perm):
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.transpose(p.x, perm))
    assert msg.startswith("transpose:")
    assert str(perm) in msg and "f32[2,3]" in msg


def test_reshape_element_count_mismatch():
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.reshape(p.x, [4, 2]))
    assert msg.startswith("reshape:")
    assert "f32[2,3]" in msg and "f32[4,2]" in msg and "6" in msg and "8" in msg


@pytest.mark.parametrize("dims", [[4, -1], [-1, -1], [0, -1]])
def test_reshape_bad_minus_one(dims):
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.reshape(p.x, dims))
    assert msg.startswith("reshape:") and "f32[2,3]" in msg


@pytest.mark.parametrize("start, limit, strides", [
    ([0, 0], [3, 3], None),   # limit past the end
    ([2, 0], [1, 3], None),   # start after limit
    ([-1, 0], [2, 3], None),  # negative start
    ([0, 0], [2, 3], [1, 0]),  # zero stride
])
def test_slice_out_of_range(start, limit, strides):
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.slice(p.x, start, limit, strides))
    assert msg.startswith("slice:")
    assert "f32[2,3]" in msg and "out of range" in msg


def test_slice_wrong_rank_and_slice_in_dim_out_of_range():
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.slice(p.x, [0], [1]))
    assert msg.startswith("slice:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.slice_in_dim(p.x, 1, 4, 1))
    assert msg.startswith("slice:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.slice_in_dim(p.x, 0, 1, 2))
    assert msg.startswith("slice:") and "dimension 2" in msg


def test_duplicate_parameter_name():
    with pytest.raises(hlo.HloBuildError, match="'x' is declared twice"):
        hlo.ParamSpec([("x", f32[2]), ("x", f32[3])])
    with pytest.raises(hlo.HloBuildError, match="'x' is declared twice"):
        hlo.ParamSpec({"x": f32[2]}, x=f32[2])
    spec = hlo.ParamSpec(x=f32[2])
    with pytest.raises(hlo.HloBuildError, match="'x' is declared twice"):
        spec.add("x", s32[2])


def test_bad_parameter_names_and_shapes():
    with pytest.raises(hlo.HloBuildError, match="identifier"):
        hlo.ParamSpec({"not a name": f32[2]})
    with pytest.raises(hlo.HloBuildError, match="not a shape"):
        hlo.ParamSpec(x=(2, 3))
    with pytest.raises(hlo.HloBuildError, match="not a shape"):
        hlo.ParamSpec(x=f32)


def test_alias_to_unknown_output():
    msg = build_error({"c": f32[4]}, lambda p: {"y": p.c * 2}, aliases={"nope": "c"})
    assert "'nope'" in msg and "['y']" in msg


def test_alias_to_unknown_parameter():
    msg = build_error({"c": f32[4]}, lambda p: {"y": p.c * 2}, aliases={"y": "cache"})
    assert "'cache'" in msg and "['c']" in msg


def test_alias_shape_mismatch():
    msg = build_error({"c": f32[4], "x": f32[2]}, lambda p: {"y": p.x * 2}, aliases={"y": "c"})
    assert "'y'" in msg and "'c'" in msg
    assert "f32[2]" in msg and "f32[4]" in msg
    msg = build_error({"c": f32[4]}, lambda p: {"y": hlo.convert(p.c, s32)}, aliases={"y": "c"})
    assert "s32[4]" in msg and "f32[4]" in msg


def test_parameter_aliased_twice():
    msg = build_error({"c": f32[4]}, lambda p: {"y": p.c * 2, "z": p.c * 3}, aliases={"y": "c", "z": "c"})
    assert "more than one output" in msg


@pytest.mark.parametrize("result", [None, {}, [], 3.0, {"y": 1.0}])
def test_program_returning_nothing(result):
    msg = build_error({"x": f32[2]}, lambda p: result, name="empty")
    assert msg.startswith("empty:")


def test_program_returning_a_tuple_value_or_foreign_value():
    msg = build_error({"x": f32[2]}, lambda p: {"t": hlo.tuple_([p.x, p.x])})
    assert "'t'" in msg
    other = hlo.build("other", hlo.ParamSpec(x=f32[2]), lambda p: {"y": p.x})
    foreign = other.entry.parameters[0]
    msg = build_error({"x": f32[2]}, lambda p: {"y": foreign})
    assert "'y'" in msg


def test_empty_module_name():
    with pytest.raises(hlo.HloBuildError, match="non-empty name"):
        hlo.build("", hlo.ParamSpec(x=f32[2]), lambda p: p.x)


def test_ops_outside_a_program():
    with pytest.raises(hlo.HloBuildError, match="no program is being built"):
        hlo.constant(1.0)
    with pytest.raises(hlo.HloBuildError, match="no program is being built"):
        hlo.iota(s32[3], 0)


def test_operand_from_another_program():
    other = hlo.build("other", hlo.ParamSpec(x=f32[2]), lambda p: p.x)
    foreign = other.entry.parameters[0]
    msg = build_error({"x": f32[2]}, lambda p: hlo.add(p.x, foreign))
    assert msg.startswith("add:") and "'other" in msg


def test_unary_float_only():
    msg = build_error({"x": s32[3]}, lambda p: hlo.exp(p.x))
    assert msg.startswith("exponential:") and "s32[3]" in msg and "floating-point" in msg
    msg = build_error({"x": s32[3]}, lambda p: hlo.tanh(p.x))
    assert msg.startswith("tanh:") and "s32[3]" in msg


def test_and_or_need_pred_or_integers():
    msg = build_error({"a": f32[3], "b": f32[3]}, lambda p: hlo.and_(p.a, p.b))
    assert msg.startswith("and:") and "f32[3]" in msg


def test_compare_and_select_errors():
    msg = build_error({"a": f32[3], "b": f32[3]}, lambda p: hlo.compare(p.a, p.b, "LTE"))
    assert msg.startswith("compare:") and "'LTE'" in msg
    msg = build_error({"a": f32[3], "b": f32[4]}, lambda p: hlo.compare(p.a, p.b, "LT"))
    assert msg.startswith("compare:") and "f32[3]" in msg and "f32[4]" in msg
    msg = build_error({"c": s32[3], "a": f32[3]}, lambda p: hlo.select(p.c, p.a, p.a))
    assert msg.startswith("select:") and "pred" in msg and "s32[3]" in msg
    msg = build_error({"c": pred[2], "a": f32[3]}, lambda p: hlo.select(p.c, p.a, p.a))
    assert msg.startswith("select:") and "pred[2]" in msg and "f32[3]" in msg
    msg = build_error({"c": pred[3], "a": f32[3], "b": s32[3]}, lambda p: hlo.select(p.c, p.a, p.b))
    assert msg.startswith("select:") and "f32[3]" in msg and "s32[3]" in msg


def test_broadcast_errors():
    msg = build_error({"x": f32[3]}, lambda p: hlo.broadcast_in_dim(p.x, (3, 2), [1]))
    assert msg.startswith("broadcast:") and "f32[3]" in msg
    msg = build_error({"x": f32[3]}, lambda p: hlo.broadcast_in_dim(p.x, (3, 2), [0, 1]))
    assert msg.startswith("broadcast:") and "f32[3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.broadcast_in_dim(p.x, (3, 2, 4), [1, 0]))
    assert msg.startswith("broadcast:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.broadcast(p.x, (3,)))
    assert msg.startswith("broadcast:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.broadcast(p.x, (4, 3)))
    assert msg.startswith("broadcast:") and "f32[2,3]" in msg


def test_concatenate_errors():
    msg = build_error({"a": f32[2, 3], "b": f32[3, 3]}, lambda p: hlo.concatenate([p.a, p.b], 1))
    assert msg.startswith("concatenate:") and "f32[2,3]" in msg and "f32[3,3]" in msg
    msg = build_error({"a": f32[2, 3], "b": s32[2, 3]}, lambda p: hlo.concatenate([p.a, p.b], 0))
    assert msg.startswith("concatenate:") and "s32[2,3]" in msg
    msg = build_error({"a": f32[2, 3]}, lambda p: hlo.concatenate([p.a, p.a], 2))
    assert msg.startswith("concatenate:") and "out of range" in msg
    msg = build_error({"a": f32[2, 3]}, lambda p: hlo.concatenate([], 0))
    assert msg.startswith("concatenate:")


def test_dynamic_slice_and_update_errors():
    msg = build_error({"x": f32[4, 5], "i": s32[()]}, lambda p: hlo.dynamic_slice(p.x, [p.i], [2, 2]))
    assert msg.startswith("dynamic-slice:") and "f32[4,5]" in msg
    msg = build_error({"x": f32[4, 5], "i": s32[()]}, lambda p: hlo.dynamic_slice(p.x, [p.i, 0], [5, 2]))
    assert msg.startswith("dynamic-slice:") and "f32[4,5]" in msg
    msg = build_error({"x": f32[4, 5], "i": f32[()]}, lambda p: hlo.dynamic_slice(p.x, [p.i, 0], [2, 2]))
    assert msg.startswith("dynamic-slice:") and "integer" in msg and "f32[]" in msg
    msg = build_error({"x": f32[4, 5], "i": s32[1]}, lambda p: hlo.dynamic_slice(p.x, [p.i, 0], [2, 2]))
    assert msg.startswith("dynamic-slice:") and "s32[1]" in msg
    msg = build_error({"x": f32[4, 5], "u": f32[5, 1]}, lambda p: hlo.dynamic_update_slice(p.x, p.u, [0, 0]))
    assert msg.startswith("dynamic-update-slice:") and "f32[4,5]" in msg and "f32[5,1]" in msg
    msg = build_error({"x": f32[4, 5], "u": s32[1, 1]}, lambda p: hlo.dynamic_update_slice(p.x, p.u, [0, 0]))
    assert msg.startswith("dynamic-update-slice:") and "s32[1,1]" in msg


def test_pad_errors():
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.pad(p.x, 0.0, [(0, 0, 0)]))
    assert msg.startswith("pad:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.pad(p.x, 0.0, [(0, 0, -1), (0, 0, 0)]))
    assert msg.startswith("pad:") and "interior" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.pad(p.x, 0.0, [(-3, 0, 0), (0, 0, 0)]))
    assert msg.startswith("pad:") and "negative" in msg
    msg = build_error({"x": f32[2, 3], "v": s32[()]}, lambda p: hlo.pad(p.x, p.v, [(0, 0, 0), (0, 0, 0)]))
    assert msg.startswith("pad:") and "s32[]" in msg


def test_gather_errors():
    msg = build_error({"x": f32[3, 4], "i": f32[2]}, lambda p: hlo.take(p.x, p.i))
    assert msg.startswith("gather:") and "f32[3,4]" in msg and "f32[2]" in msg
    msg = build_error({"x": f32[3, 4], "i": s32[2]}, lambda p: hlo.take(p.x, p.i, 2))
    assert msg.startswith("take:") and "f32[3,4]" in msg
    msg = build_error({"x": f32[3, 4], "i": s32[2, 3]}, lambda p: hlo.gather(
        p.x, p.i, offset_dims=[], collapsed_slice_dims=[0, 1], start_index_map=[0, 1], index_vector_dim=1,
        slice_sizes=[1, 1]))
    assert msg.startswith("gather:") and "s32[2,3]" in msg
    msg = build_error({"x": f32[3, 4], "i": s32[2]}, lambda p: hlo.gather(
        p.x, p.i, offset_dims=[1], collapsed_slice_dims=[0], start_index_map=[0], index_vector_dim=1,
        slice_sizes=[1, 5]))
    assert msg.startswith("gather:") and "exceed" in msg


def test_reduce_errors():
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.reduce_sum(p.x, [2]))
    assert msg.startswith("reduce:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3], "i": f32[2]}, lambda p: hlo.reduce(p.x, p.i, [0]))
    assert msg.startswith("reduce:") and "f32[2]" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.reduce(p.x, 0.0, [0], "median"))
    assert "'median'" in msg
    msg = build_error({"x": f32[2, 3]}, lambda p: hlo.argmax(p.x, 2)[0])
    assert msg.startswith("argmax:") and "f32[2,3]" in msg
    msg = build_error({"x": f32[2, 3], "y": f32[3, 2]}, lambda p: hlo.sort([p.x, p.y], 0)[0])
    assert msg.startswith("sort:") and "f32[2,3]" in msg and "f32[3,2]" in msg


def test_tuple_iota_and_collective_errors():
    msg = build_error({"x": f32[2]}, lambda p: hlo.get_tuple_element(hlo.tuple_([p.x]), 1))
    assert msg.startswith("get-tuple-element:") and "index 1" in msg
    msg = build_error({"x": f32[2]}, lambda p: hlo.get_tuple_element(p.x, 0))
    assert msg.startswith("get-tuple-element:") and "f32[2]" in msg
    msg = build_error({}, lambda p: hlo.iota(s32[2, 3], 2))
    assert msg.startswith("iota:") and "rank 2" in msg
    msg = build_error({"x": f32[2]}, lambda p: hlo.all_reduce(p.x, "add", [[0, 1], [2]]))
    assert msg.startswith("all-reduce:") and "equal sizes" in msg
    msg = build_error({"x": f32[2]}, lambda p: hlo.all_gather(p.x, 0, 4, [[0, 1], [2, 3]]))
    assert msg.startswith("all-gather:") and "group_size 4" in msg and "f32[2]" in msg


def test_non_value_operands():
    msg = build_error({"x": f32[2]}, lambda p: hlo.add(1.0, 2.0))
    assert msg.startswith("add:")
    msg = build_error({"x": f32[2]}, lambda p: hlo.add(p.x, "two"))
    assert msg.startswith("add:") and "'two'" in msg
    msg = build_error({"x": f32[2]}, lambda p: hlo.add(p.x, np.ones(2, np.float32)))
    assert msg.startswith("add:")
    msg = build_error({"x": f32[2]}, lambda p: hlo.negate(2.0))
    assert msg.startswith("negate:")


def test_unknown_parameter_attribute():
    with pytest.raises(AttributeError, match="no parameter named 'y'"):
        hlo.build("m", hlo.ParamSpec(x=f32[2]), lambda p: p.y)


def test_negative_dimension_in_shape():
    with pytest.raises(ValueError, match="negative dimension"):
        f32[2, -1]
    with pytest.raises(ValueError, match="no HLO element type"):
        hlo.dtype_of(np.dtype(np.complex64))
    assert hlo.dtype_of("u32") is u32


def test_rank_only_in_the_program_function_and_its_name_reserved():
    msg = build_error({"x": s32[2]}, lambda p: hlo.reduce(p.x, 0, [0], lambda a, b: a + hlo.rank()))
    assert "hlo.rank() is only available in the program's function" in msg
    msg = build_error({"x": f32[2], hlo.RANK_PARAM: u32[()]}, lambda p: {"r": hlo.rank()})
    assert "reserved for the rank" in msg and "s32[]" in msg
    module = hlo.build("m", hlo.ParamSpec({"x": f32[2], hlo.RANK_PARAM: s32[()]}), lambda p: {"r": hlo.rank()})
    assert module.params.names == ["x", hlo.RANK_PARAM]  # declared by the caller: used as it is


@pytest.mark.parametrize("fn", [lambda p: p.ids * 0.5, lambda p: 0.5 * p.ids, lambda p: hlo.add(p.ids, 1.0),
                                lambda p: hlo.compare(p.ids, np.float32(2.5), "LT"), lambda p: hlo.maximum(p.ids, 0.1)])
def test_python_float_with_integer_operand_is_an_error(fn):
    msg = build_error({"ids": s32[3]}, fn)
    assert "cannot combine with the s32 operand" in msg and "hlo.convert" in msg and "s32[3]" in msg


def test_python_integer_must_fit_the_integer_type():
    msg = build_error({"ids": hlo.s8[3]}, lambda p: p.ids + 300)
    assert "300 does not fit s8" in msg
    msg = build_error({"ids": u32[3]}, lambda p: p.ids - (-1))
    assert "does not fit u32" in msg


def test_programs_build_concurrently_in_threads():
    """Two threads build modules at the same time (compile_all does): each constant lands in its own module."""
    import threading

    from hlo.types import f32

    barrier = threading.Barrier(2)

    def module(name: str, scale: float, wait: bool) -> hlo.Module:
        def fn(p):
            y = p.x + scale                                  # a constant of this module
            if wait:
                barrier.wait(timeout=30)                     # both builds are under way here
            c = hlo.full(scale + 1.0, f32[4])                 # an operand-less constant: the current module's
            if wait:
                barrier.wait(timeout=30)                     # neither build has finished yet
            return {"y": y * c}
        return hlo.build(name, hlo.ParamSpec(x=f32[4]), fn)

    built, errors = {}, []

    def build(name, scale):
        try:
            built[name] = module(name, scale, True).serialize()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(n, s)) for n, s in (("a", 2.0), ("b", 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert built == {"a": module("a", 2.0, False).serialize(), "b": module("b", 3.0, False).serialize()}
