"""The slot engine's self-attention caches split by rows into segments, each stored at its own length.

On XLA CPU a decode step reads every stored position of every row's cache (`ProgramShapes.reads_stored_caches`), and
the slot state is stored at the target length of its furthest active slot: one row that runs long makes every row of
the step read that far. Continuous batching keeps rows of every age side by side, so on a corpus a few long rows
(lines that run to their limit) set the length for all: on the 600M corpus benchmark the steps cost 9 % more than
lockstep's useful steps (benchmarks/RESULTS.md, stop 23). With R long rows the state keeps slots [0, B - R)
("short") and [B - R, B) ("long") in separate tensors, each at the target length of its own furthest row
(`ProgramShapes.slot_target_lengths`: the buckets and halfway between them); the engine keeps the furthest rows in
the long segment (`SlotEngine` moves a short row there when it outgrows one). A step then reads (B - R) x T_short +
R x T_long cache positions instead of B x T_long.

    segment "short": cache_k.<i>, cache_v.<i>            [B - R, N_local, T_short, D]   slots 0 .. B-R-1
    segment "long":  long_cache_k.<i>, long_cache_v.<i>  [R, N_local, T_long, D]        slots B-R .. B-1

R = 0 is one segment of every slot under the usual names: the programs are then those of an unsplit state. Other
backends read only a step's buckets of a state stored at the largest bucket, so a split would save nothing: R = 0
there (`default_long_rows`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from hlo.types import Shape

from nllb_neuronx.program_spec import ProgramShapes

LONG_PREFIX = "long_"


@dataclass(frozen=True)
class Segment:
    """Slots [first, first + rows) of the self-attention caches, stored under parameter names `prefix` + the
    caches' names."""

    first: int
    rows: int
    prefix: str = ""

    @property
    def slots(self) -> range:
        return range(self.first, self.first + self.rows)

    def names(self, shapes: ProgramShapes) -> list[str]:
        return [self.prefix + name for name in shapes.cache_names()]

    def cache_shapes(self, shapes: ProgramShapes, target_len: int | None = None) -> dict[str, Shape]:
        """Every cache parameter of this segment at `target_len` stored positions (default T_max), by name."""
        whole = shapes.cache_shape(target_len)                                               # [B, N, T, D]
        shape = Shape(whole.dtype, (self.rows, *whole.dims[1:]))                             # [rows, N, T, D]
        return {name: shape for name in self.names(shapes)}


def segments(batch_size: int, long_rows: int) -> tuple[Segment, ...]:
    """The segments of a state of `batch_size` slots with `long_rows` of them long: (short, long), or one of all."""
    if isinstance(long_rows, bool) or not isinstance(long_rows, numbers.Integral) or not 0 <= long_rows < batch_size:
        raise ValueError(f"long_rows must lie in [0, {batch_size}) for {batch_size} slots, got {long_rows!r}")
    long_rows = int(long_rows)
    if long_rows == 0:
        return (Segment(0, batch_size),)
    short = batch_size - long_rows
    return Segment(0, short), Segment(short, long_rows, LONG_PREFIX)


def cache_names(shapes: ProgramShapes, parts: tuple[Segment, ...]) -> list[str]:
    """Every cache parameter name of `parts`, segment by segment."""
    return [name for seg in parts for name in seg.names(shapes)]


def cache_shapes(shapes: ProgramShapes, parts: tuple[Segment, ...], lengths) -> dict[str, Shape]:
    """Every cache parameter of `parts`, segment j stored at `lengths[j]` positions, by name."""
    return {name: shape for seg, t in zip(parts, lengths) for name, shape in seg.cache_shapes(shapes, t).items()}


def default_long_rows(shapes: ProgramShapes) -> int:
    """The long rows a slot state of these shapes keeps: a quarter of the slots where a step reads every stored
    position (XLA CPU), none elsewhere. On the 600M corpus benchmark (batch 8) 2 long slots cut the steps' time by
    9 % (263.1 -> 240.5 s, back to back), and a simulation of the engine on that corpus's line lengths gave 3 or 4
    only 0.5 % less step time again (benchmarks/RESULTS.md)."""
    return shapes.batch_size // 4 if shapes.reads_stored_caches else 0
