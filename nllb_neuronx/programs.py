"""The program registry of one model's shape: every program it can run (typed keys, `program_key.py`), each fetched
once (compiled, or loaded from the runtime's caches and store), run with the device weights fed by parameter name.

    registry = ProgramRegistry(shapes)
    registry.attach(runtime, weights)                  # after the weights are on the device
    out = registry.run(DecoderKey(16, "greedy", 1, 64), input_ids=..., start=..., ...)
    registry.every_program()                           # the listing save(), compile and export-hlo go through

The listing holds every program generation can run, the slot engine's included: they are always listed (not only
once an engine was made), so `save()`, `nllb-neuronx compile` and `export-hlo` give a store from which both
`sample()` and the engine compile nothing, and the Neuron check covers every program. The cost is compile time ahead
of time: at batch 8 with the default buckets, 104 programs instead of the lockstep path's 56 (slot encoders per
insert size and source bucket, slot steps per head, target and smaller source bucket, the beam step at the largest
source bucket per target bucket, one slot reorder, one slot copy for encode-ahead). On XLA CPU, where the states are
stored only as long as their rows need (`ProgramShapes.stored_lengths`), 450: reorders, slot encoders and slot copies
per stored length (the copies per staged and stored pair), the slot encoders of encode-ahead at the lengths between
buckets (`ProgramShapes.stage_lengths`), the slot steps also halfway between target buckets
(`ProgramShapes.slot_target_lengths`), the resize programs between lengths, and, with the slot engine's caches in
two row segments (`slot_segments.py`), its steps per (short, long) pair of those target lengths at every source
bucket, a slot reorder and a slot move of the caches per pair, a slot move of the encoder side per stored source
length and the resizes per segment (253 with `long_rows=0`). Programs are fetched on first use: only `compile_all`
and `save()` fetch them all (export builds them all, compiling none).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Collection, Mapping

from hlo.runtime import BoundProgram, Program

from nllb_neuronx.program_key import (DecoderKey, EncoderKey, ProgramEvent, ProgramKey, ReorderKey, ResizeKey,
                                      SlotCopyKey, SlotEncoderKey, SlotMoveCachesKey, SlotMoveKey, SlotReorderKey,
                                      SlotStepKey)
from nllb_neuronx.slot_segments import default_long_rows, segments
from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.slot_encoder import insert_sizes
from nllb_neuronx.slot_move import PARTS as MOVE_PARTS

LOCKSTEP_HEADS = ("logits", "greedy", "sample")   # decode_step, next_tokens greedy, next_tokens sampled
SLOT_HEADS = ("greedy", "sample", "beam")  # greedy; sampling (greedy rows at temperature 0); beams (+ greedy rows)


def every_program(shapes: ProgramShapes, heads: Collection[str] | None = None,
                  long_rows: int | None = None) -> list[ProgramKey]:
    """Every program generation can run with this shape, in a stable order. Lockstep: per source bucket the encoder,
    the reorder and the decoder's heads with one new token in every target bucket, the two-token prefix (decoder
    start, then the language code) only at position 0, so only in the target bucket that holds 2 positions. Slot
    engine: per source bucket a slot encoder per insert size (on XLA CPU also at the encode-ahead lengths between
    buckets, `ProgramShapes.stage_lengths`) and the slot step's heads in every target bucket (at
    the largest source bucket the slot step is the lockstep decoder program, `SlotStepKey.canonical`, listed once:
    with the lockstep programs, or here for the beam head, which only the slot engine runs); one slot reorder. With
    `decode_unroll` n > 1, also the greedy decoder of n unrolled steps per target bucket. The slot step's logits head
    (`SlotState.step(head="logits")`, for checks) is compiled when first used. `heads`: only the decode programs with
    these heads (the others kept), e.g. ("greedy",) for greedy translation alone. `long_rows`: the slot engine's
    long cache segment (`SlotEngine(long_slots=...)`; default `slot_segments.default_long_rows`)."""
    if heads is not None:
        unknown = set(heads) - set(LOCKSTEP_HEADS) - set(SLOT_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {sorted({*LOCKSTEP_HEADS, *SLOT_HEADS})}")
        return [k for k in every_program(shapes, long_rows=long_rows) if getattr(k, "head", None) in (None, *heads)]
    c = shapes.compile
    prefix_bucket = next((t for t in c.n_positions if t >= 2), None)
    keys: list[ProgramKey] = []
    for s in c.encoder_buckets:
        keys += [EncoderKey(s)] + [ReorderKey(s, t) for t in shapes.state_target_lengths()]
        for t in c.n_positions:
            for new in (1, 2) if t == prefix_bucket else (1,):
                keys += [DecoderKey(s, head, new, t) for head in LOCKSTEP_HEADS]
            if c.decode_unroll > 1 and t >= c.decode_unroll:                  # sample()'s unrolled greedy steps
                keys.append(DecoderKey(s, "greedy", 1, t, steps=c.decode_unroll))
    long_rows = default_long_rows(shapes) if long_rows is None else long_rows
    segments(c.batch_size, long_rows)                                                 # checks long_rows
    steps = shapes.slot_target_lengths()                                              # what slot steps read
    split = [(t, long) for t in steps for long in steps if long >= t]                 # (short, long) lengths
    bucket_lengths = set(c.encoder_buckets)
    for s in c.encoder_buckets:
        keys += [SlotEncoderKey(s, rows, stored) for stored in shapes.state_source_lengths() if stored >= s
                 for rows in insert_sizes(c.batch_size)]
        keys += [SlotEncoderKey(length, rows, shapes.staged_length(s)) for length in shapes.stage_lengths()
                 if length not in bucket_lengths and c.encoder_bucket(length) == s
                 for rows in insert_sizes(c.batch_size)]                   # encode-ahead between buckets (XLA CPU)
        if long_rows:
            keys += [SlotStepKey(s, head, t, long_rows, long) for t, long in split for head in SLOT_HEADS]
        elif s < shapes.max_source_length:
            keys += [SlotStepKey(s, head, t) for t in steps for head in SLOT_HEADS]
        else:  # the lockstep decoder programs, listed above, except the heads only the slot engine runs
            keys += [SlotStepKey(s, head, t).canonical(shapes) for t in steps for head in SLOT_HEADS
                     if head not in LOCKSTEP_HEADS or t not in c.n_positions]
    staged_lengths = sorted({shapes.staged_length(s) for s in c.encoder_buckets})
    keys += [SlotCopyKey(stored, staged) for stored in shapes.state_source_lengths() for staged in staged_lengths
             if staged <= stored]
    source_lengths = shapes.state_source_lengths()
    lockstep_lengths = shapes.state_target_lengths()
    keys += [ResizeKey("target", a, b) for a in lockstep_lengths for b in lockstep_lengths if a < b]  # lockstep grows
    slot_lengths = sorted({shapes.stored_target_length(t) for t in steps})        # the slot state's, both ways
    if long_rows:
        keys += [SlotReorderKey(t, long_rows, long) for t, long in split]
        keys += [SlotMoveCachesKey(t, long_rows, long, part) for t, long in split for part in MOVE_PARTS]
        keys += [SlotMoveKey(stored, part) for stored in source_lengths for part in MOVE_PARTS]
        for segment in segments(c.batch_size, long_rows):
            keys += [ResizeKey("target", a, b, segment) for a in slot_lengths for b in slot_lengths if a != b]
    else:
        keys += [SlotReorderKey(t) for t in slot_lengths]
        keys += [ResizeKey("target", a, b) for a in slot_lengths for b in slot_lengths if a != b]
    keys += [ResizeKey("source", a, b) for a in source_lengths for b in source_lengths if a != b]  # grow and shrink
    keys = list(dict.fromkeys(keys))                                                   # listed once, in order
    return [dataclasses.replace(key, quantized=True) for key in keys] if shapes.quantized else keys


class ProgramRegistry:
    """Thread-safe: the lockstep calls and the slot engine's loop thread may fetch programs at once."""

    def __init__(self, shapes: ProgramShapes):
        self.shapes = shapes
        self.runtime = None
        self.weights: Mapping[str, object] = {}
        self._build_shapes = shapes
        self._programs: dict[ProgramKey, Program] = {}
        self._bound_programs: dict[ProgramKey, BoundProgram] = {}    # weights bound once
        self._observers: list[Callable[[ProgramEvent], None]] = []
        self._lock = threading.Lock()

    def attach(self, runtime, weights: Mapping[str, object]) -> None:
        """Run programs on `runtime`, fed with `weights` (device tensors by parameter name). Programs are built for
        the runtime's backend (`ProgramShapes.for_backend`: int8 linears take the backend's form)."""
        self.runtime, self.weights = runtime, weights
        self._bound_programs = {}
        self._build_shapes = self.shapes.for_backend(runtime.backend)

    @property
    def build_shapes(self) -> ProgramShapes:
        """The shapes programs are built with: the model's, for the attached runtime's backend."""
        return self._build_shapes

    def require_runtime(self) -> None:
        if self.runtime is None:
            raise RuntimeError("call model.to_neuron() first: it starts the runtime and uploads the weights")

    # ------------------------------------------------------------------------------------------------ fetch
    def get(self, key: ProgramKey) -> Program:
        """The program `key`: built and fetched from the runtime on first use, then kept."""
        self.require_runtime()
        key = key.canonical(self._build_shapes)
        seconds = None
        with self._lock:
            program = self._programs.get(key)
            if program is None:
                start = time.perf_counter()
                program = self._programs[key] = self.runtime.compile(key.build(self._build_shapes))
                seconds = time.perf_counter() - start
        if seconds is not None:  # outside the lock: an observer may ask the registry
            self._notify(key, seconds)
        return program

    def run(self, key: ProgramKey, **inputs) -> dict:
        """Run the program `key`: weights are fed by parameter name, the rest from `inputs` (the runtime feeds the
        rank, `hlo.RANK_PARAM`)."""
        bound = self._bound(key)
        params = bound.program.module.params
        return bound.run({name: value for name, value in inputs.items() if name in params})

    def _bound(self, key: ProgramKey) -> BoundProgram:
        """The program `key` with this model's weights bound once (`Program.bind`): a call then converts only its
        own inputs, not ~200 weight arguments again."""
        key = key.canonical(self._build_shapes)
        bound = self._bound_programs.get(key)
        if bound is None:
            program = self.get(key)
            weights = {name: self.weights[name] for name in program.module.params.names if name in self.weights}
            bound = self._bound_programs.setdefault(key, program.bind(weights))
        return bound

    def _notify(self, key: ProgramKey, seconds: float) -> None:
        for callback in list(self._observers):
            callback(ProgramEvent(key, seconds))

    def add_observer(self, callback: Callable[[ProgramEvent], None]) -> None:
        """Call `callback(ProgramEvent)` for every program fetched for the first time (a compile or a load)."""
        self._observers.append(callback)

    @property
    def compiled(self) -> list[ProgramKey]:
        """The programs fetched so far (compiled or loaded), in the order they were fetched."""
        with self._lock:
            return list(self._programs)

    def forget(self) -> None:
        """Drop the handles on the programs: the next calls fetch them again from the runtime's caches."""
        with self._lock:
            self._programs.clear()
            self._bound_programs = {}

    # ---------------------------------------------------------------------------------------- ahead of time
    def every_program(self, heads: Collection[str] | None = None, long_rows: int | None = None) -> list[ProgramKey]:
        """`every_program` of the shapes programs are built with (the attached runtime's backend decides how the
        slot engine's state is stored, `ProgramShapes.stored_lengths`)."""
        return every_program(self._build_shapes, heads, long_rows)

    def compile_all(self, workers: int | None = None, heads: Collection[str] | None = None,
                    long_rows: int | None = None, warm: bool = False) -> int:
        """Fetch every listed program (`heads`, `long_rows`: see every_program) not fetched yet, several at once;
        with `warm`, then run each once on zeros (`BoundProgram.warm_up`). Returns how many the runtime compiled."""
        self.require_runtime()
        before = self.runtime.compile_count
        listed = self.every_program(heads, long_rows)
        with self._lock:
            missing = [key for key in listed if key not in self._programs]

        def fetch(key: ProgramKey):
            start = time.perf_counter()
            return key, self.runtime.compile(key.build(self._build_shapes)), time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for key, program, seconds in pool.map(fetch, missing):
                with self._lock:
                    fresh = self._programs.setdefault(key, program) is program
                if fresh:
                    self._notify(key, seconds)
        if warm:
            for key in listed:
                self._bound(key).warm_up()
        return self.runtime.compile_count - before

    def store(self, directory: str) -> dict[str, str]:
        """Write every listed program, and every other one fetched so far, into the runtime store `directory`;
        returns each program's name -> artifact key."""
        self.require_runtime()
        previous = self.runtime.use_store(directory)
        try:
            self.compile_all()
            with self._lock:
                programs = list(self._programs.values())
            for program in programs:  # compiled before the store was set: compile() writes them to it
                self.runtime.compile(program.module)
            return {p.module.name: self.runtime.artifact_key(p.module) for p in programs}
        finally:
            self.runtime.use_store(previous)
