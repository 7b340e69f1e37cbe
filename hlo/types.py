"""Element types and shapes.

`f32[4, 8]` is a `Shape`; `f32` alone is a `DType`. A Shape indexed from its dtype is also the PyHLO spelling of an
op's declared result: `f32[b, v].Dot(h, w, ...)` builds the op and checks the inferred shape against the declared one
(see `hlo.pyhlo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class DType:
    """An XLA element type: its HLO name, PrimitiveType number and numpy equivalent."""

    name: str
    primitive_type: int
    numpy_name: str

    @property
    def numpy(self) -> np.dtype:
        if self.name == "bf16":
            import ml_dtypes  # ships with jaxlib; numpy has no bfloat16

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.numpy_name)

    @property
    def is_float(self) -> bool:
        return self.name in ("f16", "bf16", "f32", "f64")

    @property
    def is_int(self) -> bool:
        return self.name[0] in "su"

    @property
    def is_signed(self) -> bool:
        return self.name[0] in "sf" or self.name == "bf16"

    def __getitem__(self, dims) -> "Shape":
        if not isinstance(dims, tuple):
            dims = (dims,)
        return Shape(self, tuple(dims))

    def __call__(self, *dims: int) -> "Shape":
        return Shape(self, tuple(dims))

    def __repr__(self) -> str:
        return self.name


pred = DType("pred", 1, "bool")
s8 = DType("s8", 2, "int8")
s16 = DType("s16", 3, "int16")
s32 = DType("s32", 4, "int32")
s64 = DType("s64", 5, "int64")
u8 = DType("u8", 6, "uint8")
u16 = DType("u16", 7, "uint16")
u32 = DType("u32", 8, "uint32")
u64 = DType("u64", 9, "uint64")
f16 = DType("f16", 10, "float16")
f32 = DType("f32", 11, "float32")
f64 = DType("f64", 12, "float64")
bf16 = DType("bf16", 16, "bfloat16")

DTYPES = {d.name: d for d in (pred, s8, s16, s32, s64, u8, u16, u32, u64, f16, f32, f64, bf16)}


def dtype_of(x) -> DType:
    """The DType of a name ("f32"), a DType, or a numpy dtype / array."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in DTYPES:
        return DTYPES[x]
    np_dtype = np.dtype(x if isinstance(x, type) else getattr(x, "dtype", x))  # np.float32 (a type) or arrays
    for d in DTYPES.values():
        if d.name != "bf16" and np.dtype(d.numpy_name) == np_dtype:
            return d
    if np_dtype.name == "bfloat16":
        return bf16
    raise ValueError(f"no HLO element type for {x!r}; supported: {', '.join(DTYPES)}")


@dataclass(frozen=True)
class Shape:
    """An array shape: element type and dimensions (row-major layout)."""

    dtype: DType
    dims: tuple[int, ...]

    def __post_init__(self):
        dims = tuple(int(d) for d in self.dims)
        if any(d < 0 for d in dims):
            raise ValueError(f"negative dimension in shape {self.dtype.name}{list(dims)}")
        object.__setattr__(self, "dims", dims)

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.numpy.itemsize

    def with_dtype(self, dtype: DType) -> "Shape":
        return Shape(dtype, self.dims)

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join(map(str, self.dims))}]"

    __repr__ = __str__

    def __getattr__(self, op_name: str):
        # PyHLO spelling: f32[4, 8].Add(a, b). Only CamelCase names are ops.
        if op_name[:1].isupper():
            from hlo.pyhlo import declared_op

            return declared_op(self, op_name)
        raise AttributeError(op_name)


@dataclass(frozen=True)
class TupleShape:
    """The shape of a tuple: its element shapes in order."""

    elements: tuple

    def __str__(self) -> str:
        return "(" + ", ".join(map(str, self.elements)) + ")"

    __repr__ = __str__


def as_dims(dims: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)
