"""HLO operations as free functions, jax.lax style: each infers its result shape and raises `HloBuildError` naming the
op, the operands and their shapes when they don't fit. Semantics are XLA's (https://openxla.org/xla/operation_semantics);
shapes are explicit, as in HLO: elementwise ops need equal shapes, except that a Python number or a rank-0 value is
broadcast to the other operand.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from hlo.builder import HloBuildError, Value, current_computation
from hlo.types import DType, Shape, TupleShape, dtype_of, pred, s32, u32


def _err(op: str, msg: str, *operands) -> HloBuildError:
    described = ", ".join(f"{v.name}: {v.shape}" if isinstance(v, Value) else repr(v) for v in operands)
    return HloBuildError(f"{op}: {msg}" + (f" (operands: {described})" if operands else ""))


def _comp(*values):
    for v in values:
        if isinstance(v, Value):
            return v.computation
    return current_computation()


def _axis(op: str, axis: int, rank: int, *operands) -> int:
    if not -rank <= axis < rank:
        raise _err(op, f"dimension {axis} is out of range for rank {rank}", *operands)
    return axis % rank


# ---------------------------------------------------------------------------------------------------------- constants

def constant(value, dtype: DType | str | None = None) -> Value:
    """A literal: a Python number or a numpy array, of `dtype` (default: the array's own; Python floats are f32)."""
    if dtype is None:
        if isinstance(value, np.ndarray) or isinstance(value, np.generic):
            dtype = dtype_of(value)
        elif isinstance(value, bool):
            dtype = pred
        elif isinstance(value, int):
            dtype = s32
        else:
            from hlo.types import f32
            dtype = f32
    dtype = dtype_of(dtype)
    array = np.asarray(value).astype(dtype.numpy)
    return current_computation().add("constant", Shape(dtype, array.shape), attrs={"literal": array})


def full(value, shape: Shape) -> Value:
    """`shape` filled with `value` (a scalar constant broadcast)."""
    return broadcast(constant(value, shape.dtype), shape.dims)


def iota(shape: Shape, dimension: int) -> Value:
    """Values 0, 1, ... along `dimension` of `shape`."""
    dimension = _axis("iota", dimension, shape.rank)
    return current_computation().add("iota", shape, attrs={"dimensions": [dimension]})


def replica_id() -> Value:
    """This replica's number, u32[]; with tensor parallelism, the rank. Neuron does not take it (see
    `hlo.targets.neuron`): programs meant for NeuronCores use `rank()`."""
    return current_computation().add("replica-id", Shape(u32, ()))


def rank() -> Value:
    """This rank's number, s32[], as a program parameter (`hlo.RANK_PARAM`) rather than `replica-id`, which
    neuronx-cc does not take (transformers-neuronx and NxD feed the rank the same way). The builder adds the
    parameter to the program's ParamSpec on first use; `hlo.runtime` feeds every rank its number unless the caller
    does. Only in the program's own function, not in a reducer or comparator."""
    return current_computation().module.rank_parameter(current_computation())


# -------------------------------------------------------------------------------------------------------- elementwise

def _lift(op: str, x, like: Value) -> Value:
    """A Python or numpy number as a constant of `like`'s element type. A fraction never becomes an integer (`ids *
    0.5` would multiply by 0), and an integer must fit the integer type: both are errors asking for a convert."""
    if isinstance(x, Value):
        return x
    if not isinstance(x, (int, float, bool, np.number)):
        raise _err(op, f"cannot use {x!r} as an operand")
    dtype = like.dtype
    if (dtype.is_int or dtype == pred) and isinstance(x, (float, np.floating)):
        raise _err(op, f"the number {x!r} cannot combine with the {dtype} operand without changing its value; "
                       f"convert the operand to a float type first (hlo.convert)", like)
    if dtype.is_int and not isinstance(x, (bool, np.bool_)):
        info = np.iinfo(dtype.numpy)
        if not info.min <= int(x) <= info.max:
            raise _err(op, f"the number {x!r} does not fit {dtype} ({info.min}..{info.max})", like)
    return constant(x, dtype)


def _binary_operands(op: str, a, b) -> tuple[Value, Value]:
    if not isinstance(a, Value) and not isinstance(b, Value):
        raise _err(op, "needs at least one HLO value", a, b)
    a = _lift(op, a, b if isinstance(b, Value) else None) if not isinstance(a, Value) else a
    b = _lift(op, b, a)
    if a.dtype != b.dtype:
        raise _err(op, f"element types differ ({a.dtype} vs {b.dtype}); convert one first", a, b)
    if a.dims != b.dims:
        if a.shape.rank == 0:
            a = broadcast(a, b.dims)
        elif b.shape.rank == 0:
            b = broadcast(b, a.dims)
        else:
            raise _err(op, "shapes differ; broadcast explicitly with hlo.broadcast_in_dim", a, b)
    return a, b


def _binary(opcode: str, doc: str) -> Callable[[Value, Value], Value]:
    def op(a, b) -> Value:
        a, b = _binary_operands(opcode, a, b)
        if opcode in ("and", "or", "xor") and not (a.dtype == pred or a.dtype.is_int):
            raise _err(opcode, "needs pred or integer operands", a, b)
        return a.computation.add(opcode, a.shape, (a, b))

    op.__name__ = opcode
    op.__doc__ = doc
    return op


add = _binary("add", "a + b, elementwise.")
subtract = _binary("subtract", "a - b, elementwise.")
multiply = _binary("multiply", "a * b, elementwise.")
divide = _binary("divide", "a / b, elementwise (integer division rounds toward zero).")
maximum = _binary("maximum", "max(a, b), elementwise.")
minimum = _binary("minimum", "min(a, b), elementwise.")
power = _binary("power", "a ** b, elementwise.")
remainder = _binary("remainder", "a % b with the sign of a (C fmod), elementwise.")
and_ = _binary("and", "a & b for pred or integers.")
or_ = _binary("or", "a | b for pred or integers.")


def _unary(opcode: str, doc: str, float_only: bool = True) -> Callable[[Value], Value]:
    def op(x: Value) -> Value:
        if not isinstance(x, Value):
            raise _err(opcode, f"operand {x!r} is not an HLO value")
        if float_only and not x.dtype.is_float:
            raise _err(opcode, f"needs a floating-point operand, got {x.dtype}", x)
        return x.computation.add(opcode, x.shape, (x,))

    op.__name__ = opcode
    op.__doc__ = doc
    return op


exp = _unary("exponential", "e ** x.")
log = _unary("log", "Natural logarithm.")
rsqrt = _unary("rsqrt", "1 / sqrt(x).")
sqrt = _unary("sqrt", "Square root.")
tanh = _unary("tanh", "Hyperbolic tangent.")
sine = _unary("sine", "sin(x).")
cosine = _unary("cosine", "cos(x).")
floor = _unary("floor", "Round toward minus infinity.")
negate = _unary("negate", "-x.", float_only=False)
abs = _unary("abs", "|x|.", float_only=False)  # noqa: A001 - HLO's name
not_ = _unary("not", "Logical (pred) or bitwise (integer) not.", float_only=False)

_DIRECTIONS = ("EQ", "NE", "LT", "LE", "GT", "GE")


def compare(a, b, direction: str) -> Value:
    """a <direction> b elementwise, direction one of EQ NE LT LE GT GE; result pred."""
    direction = direction.upper()
    if direction not in _DIRECTIONS:
        raise _err("compare", f"direction {direction!r} is not one of {_DIRECTIONS}")
    a, b = _binary_operands("compare", a, b)
    return a.computation.add("compare", a.shape.with_dtype(pred), (a, b), attrs={"comparison_direction": direction})


def select(predicate: Value, on_true, on_false) -> Value:
    """Elementwise `predicate ? on_true : on_false`; a pred[] predicate chooses whole arrays."""
    on_true, on_false = _binary_operands("select", on_true, on_false)
    if not isinstance(predicate, Value) or predicate.dtype != pred:
        raise _err("select", "the predicate must be a pred value", predicate)
    if predicate.dims != on_true.dims:
        if predicate.shape.rank != 0:
            raise _err("select", "predicate and operands differ in shape", predicate, on_true, on_false)
        predicate = broadcast(predicate, on_true.dims)
    return on_true.computation.add("select", on_true.shape, (predicate, on_true, on_false))


def convert(x: Value, dtype: DType | str) -> Value:
    """Element type conversion (floats to integers round toward zero)."""
    dtype = dtype_of(dtype)
    if x.dtype == dtype:
        return x
    return x.computation.add("convert", x.shape.with_dtype(dtype), (x,))


# ------------------------------------------------------------------------------------------------------------- shapes

def reshape(x: Value, dims: Sequence[int]) -> Value:
    """Same elements in row-major order, new dimensions; one dimension may be -1."""
    dims = [int(d) for d in dims]
    if dims.count(-1) > 1:
        raise _err("reshape", f"at most one -1 in {dims}", x)
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or x.shape.size % known:
            raise _err("reshape", f"cannot infer -1 in {dims}", x)
        dims[dims.index(-1)] = x.shape.size // known
    new = Shape(x.dtype, tuple(dims))
    if new.size != x.shape.size:
        raise _err("reshape", f"{x.shape} has {x.shape.size} elements, {new} has {new.size}", x)
    if new.dims == x.dims:
        return x
    return x.computation.add("reshape", new, (x,))


def transpose(x: Value, permutation: Sequence[int]) -> Value:
    """Result dimension i is operand dimension permutation[i]."""
    permutation = [int(p) for p in permutation]
    if sorted(permutation) != list(range(x.shape.rank)):
        raise _err("transpose", f"{permutation} is not a permutation of {x.shape.rank} dimensions", x)
    if permutation == sorted(permutation):
        return x
    dims = tuple(x.dims[p] for p in permutation)
    return x.computation.add("transpose", Shape(x.dtype, dims), (x,), attrs={"dimensions": permutation})


def broadcast_in_dim(x: Value, dims: Sequence[int], broadcast_dimensions: Sequence[int]) -> Value:
    """XLA Broadcast: a result of `dims` in which operand dimension i is result dimension broadcast_dimensions[i]
    (same size) and every other result dimension repeats the operand."""
    dims = tuple(int(d) for d in dims)
    broadcast_dimensions = [int(d) for d in broadcast_dimensions]
    if len(broadcast_dimensions) != x.shape.rank:
        raise _err("broadcast", f"needs one target dimension per operand dimension, got {broadcast_dimensions}", x)
    if broadcast_dimensions != sorted(set(broadcast_dimensions)) or any(d >= len(dims) for d in broadcast_dimensions):
        raise _err("broadcast", f"target dimensions {broadcast_dimensions} must increase and lie in {dims}", x)
    for i, d in enumerate(broadcast_dimensions):
        if x.dims[i] != dims[d]:
            raise _err("broadcast", f"operand dimension {i} (size {x.dims[i]}) cannot become size {dims[d]}", x)
    if dims == x.dims:
        return x
    return x.computation.add("broadcast", Shape(x.dtype, dims), (x,), attrs={"dimensions": broadcast_dimensions})


def broadcast(x: Value, dims: Sequence[int]) -> Value:
    """Numpy-style broadcast to `dims`: operand dimensions align with the trailing result dimensions; size-1
    dimensions are stretched."""
    dims = tuple(int(d) for d in dims)
    offset = len(dims) - x.shape.rank
    if offset < 0:
        raise _err("broadcast", f"cannot broadcast to fewer dimensions {dims}", x)
    keep = [i for i in range(x.shape.rank) if x.dims[i] == dims[offset + i]]
    for i in range(x.shape.rank):
        if x.dims[i] not in (1, dims[offset + i]):
            raise _err("broadcast", f"dimension {i} of size {x.dims[i]} cannot broadcast to {dims}", x)
    if len(keep) != x.shape.rank:
        x = reshape(x, [x.dims[i] for i in keep])
    return broadcast_in_dim(x, dims, [offset + i for i in keep])


def concatenate(values: Sequence[Value], dimension: int) -> Value:
    """Join arrays along `dimension`; all other dimensions and the element type must agree."""
    values = list(values)
    if not values:
        raise _err("concatenate", "needs at least one operand")
    first = values[0]
    dimension = _axis("concatenate", dimension, first.shape.rank, *values)
    for v in values[1:]:
        if v.dtype != first.dtype or v.shape.rank != first.shape.rank or any(
            a != b for i, (a, b) in enumerate(zip(v.dims, first.dims)) if i != dimension
        ):
            raise _err("concatenate", f"operands differ outside dimension {dimension}", *values)
    if len(values) == 1:
        return first
    dims = list(first.dims)
    dims[dimension] = sum(v.dims[dimension] for v in values)
    return first.computation.add("concatenate", Shape(first.dtype, tuple(dims)), values,
                                 attrs={"dimensions": [dimension]})


def slice(x: Value, start: Sequence[int], limit: Sequence[int], strides: Sequence[int] | None = None) -> Value:  # noqa: A001
    """x[start:limit:strides] with static bounds."""
    strides = list(strides or [1] * x.shape.rank)
    if not len(start) == len(limit) == len(strides) == x.shape.rank:
        raise _err("slice", f"start {list(start)}, limit {list(limit)}, strides {strides} must have rank entries", x)
    dims = []
    for d, (lo, hi, st) in enumerate(zip(start, limit, strides)):
        if not (0 <= lo <= hi <= x.dims[d]) or st < 1:
            raise _err("slice", f"bounds [{lo}:{hi}:{st}] out of range for dimension {d}", x)
        dims.append((hi - lo + st - 1) // st)
    return x.computation.add("slice", Shape(x.dtype, tuple(dims)), (x,),
                             attrs={"slice": [(int(a), int(b), int(c)) for a, b, c in zip(start, limit, strides)]})


def slice_in_dim(x: Value, start: int, limit: int, dimension: int) -> Value:
    """x[..., start:limit, ...] along one dimension."""
    dimension = _axis("slice", dimension, x.shape.rank, x)
    starts, limits = [0] * x.shape.rank, list(x.dims)
    starts[dimension], limits[dimension] = start, limit
    return slice(x, starts, limits)


def _start_indices(op: str, x: Value, starts) -> list[Value]:
    if len(starts) != x.shape.rank:
        raise _err(op, f"needs {x.shape.rank} start indices, got {len(starts)}", x)
    out = []
    for s in starts:
        s = constant(int(s), s32) if not isinstance(s, Value) else s
        if s.shape.rank != 0 or not s.dtype.is_int:
            raise _err(op, "start indices must be integer scalars", x, s)
        out.append(s)
    if len({s.dtype for s in out}) > 1:
        out = [convert(s, s32) for s in out]
    return out


def dynamic_slice(x: Value, starts: Sequence, sizes: Sequence[int]) -> Value:
    """x[starts : starts + sizes], starts are scalar values (clamped into range, as XLA does)."""
    starts = _start_indices("dynamic-slice", x, starts)
    sizes = [int(s) for s in sizes]
    if len(sizes) != x.shape.rank or any(not 0 <= s <= d for s, d in zip(sizes, x.dims)):
        raise _err("dynamic-slice", f"sizes {sizes} do not fit", x)
    return x.computation.add("dynamic-slice", Shape(x.dtype, tuple(sizes)), (x, *starts),
                             attrs={"dynamic_slice_sizes": sizes})


def dynamic_update_slice(x: Value, update: Value, starts: Sequence) -> Value:
    """x with `update` written at `starts` (clamped so that the update fits)."""
    starts = _start_indices("dynamic-update-slice", x, starts)
    if update.dtype != x.dtype or update.shape.rank != x.shape.rank or any(
        u > d for u, d in zip(update.dims, x.dims)
    ):
        raise _err("dynamic-update-slice", "the update must have the operand's type and fit inside it", x, update)
    return x.computation.add("dynamic-update-slice", x.shape, (x, update, *starts))


def pad(x: Value, padding_value, config: Sequence[tuple[int, int, int]]) -> Value:
    """Pad each dimension with (low, high, interior) elements of `padding_value`."""
    padding_value = _lift("pad", padding_value, x)
    if padding_value.shape != Shape(x.dtype, ()):
        raise _err("pad", "the padding value must be a scalar of the operand's type", x, padding_value)
    if len(config) != x.shape.rank:
        raise _err("pad", f"needs one (low, high, interior) per dimension, got {list(config)}", x)
    dims = []
    for d, (lo, hi, interior) in zip(x.dims, config):
        if interior < 0:
            raise _err("pad", "interior padding must be non-negative", x)
        size = lo + hi + d + max(d - 1, 0) * interior
        if size < 0:
            raise _err("pad", f"padding {config} makes a negative size", x)
        dims.append(size)
    return x.computation.add("pad", Shape(x.dtype, tuple(dims)), (x, padding_value),
                             attrs={"padding": [tuple(int(v) for v in c) for c in config]})


def gather(operand: Value, indices: Value, *, offset_dims, collapsed_slice_dims, start_index_map,
           index_vector_dim: int, slice_sizes) -> Value:
    """XLA Gather: slices of `operand` of `slice_sizes` starting at the index vectors in `indices`."""
    offset_dims, collapsed, start_map = list(offset_dims), list(collapsed_slice_dims), list(start_index_map)
    slice_sizes = [int(s) for s in slice_sizes]
    if not indices.dtype.is_int:
        raise _err("gather", "indices must be integers", operand, indices)
    if len(slice_sizes) != operand.shape.rank:
        raise _err("gather", f"slice_sizes {slice_sizes} needs one entry per operand dimension", operand)
    if any(slice_sizes[d] > 1 for d in collapsed):
        raise _err("gather", "collapsed dimensions must have slice size 1", operand)
    if any(s > d for s, d in zip(slice_sizes, operand.dims)):
        raise _err("gather", f"slice_sizes {slice_sizes} exceed the operand", operand)
    batch_dims = list(indices.dims)
    if index_vector_dim < indices.shape.rank:
        if indices.dims[index_vector_dim] != len(start_map):
            raise _err("gather", "index vectors must have one entry per start_index_map entry", operand, indices)
        del batch_dims[index_vector_dim]
    elif len(start_map) != 1:
        raise _err("gather", "scalar indices need exactly one start_index_map entry", operand, indices)
    offsets = [s for d, s in enumerate(slice_sizes) if d not in collapsed]
    rank = len(batch_dims) + len(offsets)
    if len(offset_dims) != len(offsets) or any(not 0 <= d < rank for d in offset_dims):
        raise _err("gather", f"offset_dims {offset_dims} do not fit the result rank {rank}", operand, indices)
    dims, batch_iter, offset_iter = [], iter(batch_dims), iter(offsets)
    for d in range(rank):
        dims.append(next(offset_iter) if d in offset_dims else next(batch_iter))
    attrs = {"offset_dims": offset_dims, "collapsed_slice_dims": collapsed, "start_index_map": start_map,
             "index_vector_dim": int(index_vector_dim), "slice_sizes": slice_sizes}
    return operand.computation.add("gather", Shape(operand.dtype, tuple(dims)), (operand, indices), attrs=attrs)


def take(x: Value, indices: Value, axis: int = 0) -> Value:
    """numpy.take: rows of `x` along `axis` at integer `indices` of any shape (out-of-range indices are clamped)."""
    axis = _axis("take", axis, x.shape.rank, x)
    slice_sizes = list(x.dims)
    slice_sizes[axis] = 1
    offset_dims = [indices.shape.rank + d for d in range(x.shape.rank - 1)]
    taken = gather(x, indices, offset_dims=offset_dims, collapsed_slice_dims=[axis], start_index_map=[axis],
                   index_vector_dim=indices.shape.rank, slice_sizes=slice_sizes)
    if axis == 0:
        return taken
    # gather puts the index dimensions first; move them to where `axis` was
    r, k = x.shape.rank - 1, indices.shape.rank
    perm = list(range(k, k + axis)) + list(range(k)) + list(range(k + axis, k + r))
    return transpose(taken, perm)


# -------------------------------------------------------------------------------------------------------------- dot

def dot_general(lhs: Value, rhs: Value, contracting: tuple[Sequence[int], Sequence[int]],
                batch: tuple[Sequence[int], Sequence[int]] = ((), ()), preferred_element_type=None) -> Value:
    """Contract `lhs` and `rhs`. Result dimensions: batch, then lhs free, then rhs free (XLA's order)."""
    lc, rc = [list(c) for c in contracting]
    lb, rb = [list(b) for b in batch]
    if lhs.dtype != rhs.dtype:
        raise _err("dot", f"element types differ ({lhs.dtype} vs {rhs.dtype})", lhs, rhs)
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise _err("dot", f"contracting {contracting} / batch {batch} dimension lists differ in length", lhs, rhs)
    for l_dim, r_dim, kind in [(a, b, "contracting") for a, b in zip(lc, rc)] + [(a, b, "batch") for a, b in zip(lb, rb)]:
        if not (0 <= l_dim < lhs.shape.rank and 0 <= r_dim < rhs.shape.rank):
            raise _err("dot", f"{kind} dimension pair ({l_dim}, {r_dim}) out of range", lhs, rhs)
        if lhs.dims[l_dim] != rhs.dims[r_dim]:
            raise _err("dot", f"{kind} dimensions lhs[{l_dim}]={lhs.dims[l_dim]} and rhs[{r_dim}]={rhs.dims[r_dim]} "
                              f"differ", lhs, rhs)
    if len(set(lc + lb)) != len(lc + lb) or len(set(rc + rb)) != len(rc + rb):
        raise _err("dot", "a dimension is used twice", lhs, rhs)
    dims = [lhs.dims[d] for d in lb]
    dims += [s for d, s in enumerate(lhs.dims) if d not in lc + lb]
    dims += [s for d, s in enumerate(rhs.dims) if d not in rc + rb]
    dtype = dtype_of(preferred_element_type) if preferred_element_type is not None else lhs.dtype
    attrs = {"lhs_contracting_dimensions": lc, "rhs_contracting_dimensions": rc,
             "lhs_batch_dimensions": lb, "rhs_batch_dimensions": rb}
    return lhs.computation.add("dot", Shape(dtype, tuple(dims)), (lhs, rhs), attrs=attrs)


def dot(lhs: Value, rhs: Value, preferred_element_type=None) -> Value:
    """Matrix product: contracts the last dimension of `lhs` with the first of `rhs`."""
    return dot_general(lhs, rhs, ([lhs.shape.rank - 1], [0]), preferred_element_type=preferred_element_type)


# ---------------------------------------------------------------------------------------------------------- reduce

_REDUCERS = {"add": add, "max": maximum, "min": minimum, "multiply": multiply, "and": and_, "or": or_}


def scalar_computation(kind: str | Callable, dtype: DType, arity: int = 2):
    """A called computation of `arity` scalars of `dtype`: one of add/max/min/multiply/and/or, or a function."""
    comp = _comp()
    fn = _REDUCERS.get(kind) if isinstance(kind, str) else kind
    if fn is None:
        raise HloBuildError(f"unknown reducer {kind!r}; use one of {sorted(_REDUCERS)} or a function")
    key = (kind, dtype.name, arity)  # the function itself, not its id: a freed lambda's id can be reused
    return comp.module.subcomputation(key, f"{kind if isinstance(kind, str) else 'fn'}_{dtype.name}",
                                      [Shape(dtype, ())] * arity, fn)


def reduce(x: Value, init, dimensions: Sequence[int], reducer: str | Callable = "add") -> Value:
    """Reduce `dimensions` of `x` with a scalar `reducer` ("add", "max", ... or a function of two scalars)."""
    dims = sorted({_axis("reduce", d, x.shape.rank, x) for d in dimensions})
    init = _lift("reduce", init, x)
    if init.shape != Shape(x.dtype, ()):
        raise _err("reduce", "the initial value must be a scalar of the operand's type", x, init)
    comp = scalar_computation(reducer, x.dtype)
    out = Shape(x.dtype, tuple(s for d, s in enumerate(x.dims) if d not in dims))
    return x.computation.add("reduce", out, (x, init), attrs={"dimensions": dims}, called=(comp,))


def reduce_sum(x: Value, dimensions: Sequence[int]) -> Value:
    return reduce(x, 0, dimensions, "add")


def reduce_max(x: Value, dimensions: Sequence[int]) -> Value:
    return reduce(x, float("-inf") if x.dtype.is_float else int(np.iinfo(x.dtype.numpy).min), dimensions, "max")


def argmax(x: Value, dimension: int, index_dtype: DType = s32, index_offset: Value | None = None,
           indices: Value | None = None):
    """(max, first index of the max) along `dimension`: a reduce-max, then the smallest index whose value equals the
    max (a reduce-min), so no variadic reduce, which neuronx-cc does not take. `index_offset` (a scalar of
    `index_dtype`) is added to every index, for a shard of a larger axis; or `indices` (same dimensions as `x`) gives
    each element's index outright. Ties go to the smallest index, as numpy and torch do. Where a row holds a NaN, XLA's
    max is NaN and no value equals it: the index is then the index type's largest value (a caller that must tell
    NaN rows apart tests the row for NaN itself, as a backend's max may skip NaN)."""
    dimension = _axis("argmax", dimension, x.shape.rank, x)
    if indices is None:
        indices = iota(x.shape.with_dtype(index_dtype), dimension)
    elif indices.dims != x.dims or not indices.dtype.is_int:
        raise _err("argmax", "indices must be integers with the operand's dimensions", x, indices)
    if index_offset is not None:
        indices = add(indices, index_offset)
    keep = [d for d in range(x.shape.rank) if d != dimension]
    best = reduce_max(x, [dimension])                                                   # [others]
    hit = compare(x, broadcast_in_dim(best, x.dims, keep), "EQ")
    largest = int(np.iinfo(indices.dtype.numpy).max)
    index = reduce(select(hit, indices, full(largest, indices.shape)), largest, [dimension], "min")
    return best, index


def sort(operands: Sequence[Value], dimension: int, comparator: Callable | None = None,
         descending: bool = False, is_stable: bool = True) -> list[Value]:
    """Sort `operands` (same dimensions) together along `dimension` by the first one, or by `comparator(a0, b0, a1,
    b1, ...)` returning pred[]."""
    operands = list(operands)
    first = operands[0]
    dimension = _axis("sort", dimension, first.shape.rank, *operands)
    if any(v.dims != first.dims for v in operands):
        raise _err("sort", "operands must have equal dimensions", *operands)
    direction = "GT" if descending else "LT"
    key_fn = comparator if comparator is not None else direction
    if comparator is None:
        def comparator(a, b, *_):
            return compare(a, b, direction)
    shapes = [Shape(v.dtype, ()) for v in operands for _ in (0, 1)]
    comp = first.computation.module.subcomputation(
        ("sort", key_fn, tuple(s.dtype.name for s in shapes)), "compare", shapes, comparator)
    shape = TupleShape(tuple(v.shape for v in operands)) if len(operands) > 1 else first.shape
    out = first.computation.add("sort", shape, operands, attrs={"dimensions": [dimension], "is_stable": is_stable},
                                called=(comp,))
    return [get_tuple_element(out, i) for i in range(len(operands))] if len(operands) > 1 else [out]


# ------------------------------------------------------------------------------------------------------------ tuples

def tuple_(values: Sequence[Value]) -> Value:
    values = list(values)
    return _comp(*values).add("tuple", TupleShape(tuple(v.shape for v in values)), values)


def get_tuple_element(t: Value, index: int) -> Value:
    if not isinstance(t.shape, TupleShape) or not 0 <= index < len(t.shape.elements):
        raise _err("get-tuple-element", f"index {index} out of range", t)
    return t.computation.add("get-tuple-element", t.shape.elements[index], (t,), attrs={"tuple_index": index})


# ------------------------------------------------------------------------------------------------------- collectives

def _groups(op: str, replica_groups) -> list[list[int]]:
    groups = [list(map(int, g)) for g in (replica_groups or [])]
    if groups and len({len(g) for g in groups}) != 1:
        raise _err(op, f"replica groups must have equal sizes, got {groups}")
    return groups


def all_reduce(x: Value, reducer: str | Callable = "add", replica_groups=None) -> Value:
    """Reduce `x` across the replicas of each group (default: all replicas); every replica gets the result."""
    groups = _groups("all-reduce", replica_groups)
    comp = scalar_computation(reducer, x.dtype)
    return x.computation.add("all-reduce", x.shape, (x,), attrs={"replica_groups": groups}, called=(comp,))


def all_gather(x: Value, dimension: int, group_size: int, replica_groups=None) -> Value:
    """Concatenate `x` from the `group_size` replicas of each group along `dimension`, in replica order."""
    groups = _groups("all-gather", replica_groups)
    if groups and len(groups[0]) != group_size:
        raise _err("all-gather", f"group_size {group_size} differs from the replica groups {groups}", x)
    dimension = _axis("all-gather", dimension, x.shape.rank, x)
    dims = list(x.dims)
    dims[dimension] *= group_size
    return x.computation.add("all-gather", Shape(x.dtype, tuple(dims)), (x,),
                             attrs={"dimensions": [dimension], "replica_groups": groups})


# ------------------------------------------------------------------------------------------------------ custom calls

def custom_call(target: str, operands: Sequence[Value], shape: Shape, backend_config: str = "") -> Value:
    """A call of the backend's own kernel `target` (e.g. Neuron's "AwsNeuronTopK") with a declared result `shape`;
    `backend_config` is passed through as the target reads it. XLA CPU runs only the targets registered with it."""
    operands = list(operands)
    if not target or not isinstance(target, str):
        raise _err("custom-call", f"needs a target name, got {target!r}", *operands)
    return _comp(*operands).add("custom-call", shape, operands,
                                attrs={"custom_call_target": target, "backend_config": str(backend_config)})
