"""The slot engine's device state, and the programs that change it: insert new requests, step every slot, reorder.

State (on the device, updated in place by aliasing), B = the model's batch_size slots:

    cache_k.<i>, cache_v.<i>  [B, N_local, T_stored, D]    layer i's self-attention, row b at slot b's own positions
                                                           (on XLA CPU in two row segments: `slot_segments.py`)
    cross_k.<i>, cross_v.<i>  [B, N_local, S_stored, D]    layer i's cross-attention
    encoder_attention_mask    s32[B, S_stored]

`insert()` runs the slot encoder (`slot_encoder.py`) on up to B new sources at their length bucket and writes them
into the chosen slots. Encode-ahead: `stage()` runs it on up to B queued sources of one bucket into free rows of a
staging area (the same tensors; one area per `ProgramShapes.staged_length`: on XLA CPU one per source bucket, the
sources encoded at a length of `ProgramShapes.stage_lengths`, finer than the buckets; elsewhere one area at the
largest bucket), and `insert_staged()` copies a staged row into slots when they free (`slot_copy.py`). `step()` runs
the decoder (`decoder.py`) once, one token per slot, each slot at its own position; it reads the cache up to the
target length of the furthest active slot and the cross-attention K/V up to the largest source bucket among the
active slots. `reorder()` makes slots copies of other slots' self-attention caches (beam search,
`slot_reorder.py`).

Stored lengths (`ProgramShapes.stored_lengths`): on Neuron the largest buckets, for good (a step reads its buckets of
them). On XLA CPU, where a step reads every stored position, the state follows what the active slots need: before a
step it is resized (`resize.py`) to the target length of the furthest active slot (the target buckets and halfway
between them, `ProgramShapes.slot_target_lengths`) and the largest active source bucket, and an insert grows the
source side to the new sources' bucket where it is longer, so a step of short rows does not pay for a long row that
has finished. There the self-attention caches are also kept in two row segments
(`slot_segments.py`), each stored at the target length of its own furthest active slot (the long one at least as
long as the short one), so a step of short rows pays for a long row that is still running only in the long segment's
rows; `move()` swaps requests between slots (the engine keeps its furthest rows in the long segment).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from nllb_neuronx.program_key import (ResizeKey, SlotCopyKey, SlotEncoderKey, SlotMoveCachesKey, SlotMoveKey,
                                      SlotReorderKey, SlotStepKey)
from nllb_neuronx.slot_copy import STAGED, staging_shapes
from nllb_neuronx.slot_encoder import insert_sizes, slot_state_shapes
from nllb_neuronx.slot_segments import cache_names, cache_shapes, default_long_rows, segments


@dataclass(frozen=True)
class StagedRow:
    """Where a request encoded ahead waits (`SlotState.stage`): row `row` of the staging area stored at `length`
    source positions; `bucket`: its source bucket."""

    length: int
    row: int
    bucket: int


class SlotState:
    """Device state of B decode slots. Not thread-safe: one thread (the engine's loop) calls it.

    `long_rows`: slots kept in the long cache segment (`slot_segments.py`; default `default_long_rows`: a quarter of
    them on XLA CPU, none elsewhere), the last ones."""

    def __init__(self, model, long_rows: int | None = None):
        if model.runtime is None:
            raise RuntimeError("call model.to_neuron() first: it starts the runtime and uploads the weights")
        self.model, self.shapes = model, model.shapes
        self.batch_size = model.batch_size
        self._build_shapes = model.programs.build_shapes          # the runtime's backend: how the state is stored
        self.segments = segments(self.batch_size,                   # checks long_rows
                                 default_long_rows(self._build_shapes) if long_rows is None else long_rows)
        self.long_rows = self.segments[-1].rows if len(self.segments) > 1 else 0
        self._cache_names = cache_names(self.shapes, self.segments)
        self.insert_sizes = insert_sizes(self.batch_size)
        self._tensors: dict[str, object] | None = None
        self._staging: dict[int, dict[str, object]] = {}           # encode-ahead areas by staged length, made on use
        self.resizes = 0                                           # resize program calls so far

    @property
    def long_slots(self) -> range:
        """The slots of the long cache segment (empty where the caches are one segment)."""
        return self.segments[-1].slots if self.long_rows else range(0)

    def _smallest(self) -> tuple[int, int]:
        c = self.model.compile_config
        return self._build_shapes.stored_lengths(c.n_positions[0], c.encoder_buckets[0])

    @property
    def stored_lengths(self) -> tuple[int, int]:
        """The (target, source) positions the state is stored at now (its tensors' lengths); with two cache segments
        the target is the short one's (`stored_target_lengths` has both)."""
        return self.stored_target_lengths[0], self._state()["encoder_attention_mask"].shape.dims[1]

    @property
    def stored_target_lengths(self) -> tuple[int, ...]:
        """The target positions each cache segment is stored at now, short then long (one: every slot's)."""
        state = self._state()
        return tuple(state[seg.names(self.shapes)[0]].shape.dims[2] for seg in self.segments)

    def reset(self) -> None:
        """Fresh zero state at the smallest stored lengths (also after a failed device call, whose donated buffers
        may be gone). Staged rows are kept (a failed staging call loses its area's: it is made again on next use)."""
        target, source = self._smallest()
        caches = cache_shapes(self.shapes, self.segments, [target] * len(self.segments))
        self._tensors = self._zeros({**caches, **slot_state_shapes(self.shapes, source)})

    def _zeros(self, shapes: dict) -> dict[str, object]:
        return {name: self.model.runtime.put(np.zeros(s.dims, s.dtype.numpy)) for name, s in shapes.items()}

    def _state(self) -> dict[str, object]:
        if self._tensors is None:
            self.reset()
        return self._tensors

    def _store_at(self, target_lens: tuple[int, ...], source_len: int) -> None:
        """Resize the state to `stored_lengths` of `target_lens` (one per cache segment) and `source_len`, one
        segment and side at a time (a no-op where the state keeps one size)."""
        build = self._build_shapes
        for segment, have, want in zip(self.segments, self.stored_target_lengths, target_lens):
            want = build.stored_target_length(want)
            if have != want:
                self._resize(ResizeKey("target", have, want, segment if self.long_rows else None),
                             segment.names(self.shapes))
        have, want = self.stored_lengths[1], build.stored_source_length(source_len)
        if have != want:
            self._resize(ResizeKey("source", have, want), list(slot_state_shapes(self.shapes)))

    def _resize(self, key: ResizeKey, names: list[str]) -> None:
        state = self._state()
        self._tensors = None                                   # inputs of a program: rebuilt if it fails
        out = self.model.run_program(key, **{n: state[n] for n in names})
        self._tensors = {**state, **out}
        self.resizes += 1

    def _encoder_inputs(self, rows: list[int], sources: list[np.ndarray], length: int) -> dict[str, np.ndarray]:
        """The slot encoder's inputs writing `sources` (1-D id arrays, no padding) into `rows` at `length` source
        positions: a sub-batch padded to an insert size with copies of its first row (same row, so row 0 is written
        last)."""
        pad = self.model.config.pad_token_id
        k = next(k for k in self.insert_sizes if k >= len(rows))
        ids = np.full((k, length), pad, np.int32)
        index = np.full(k, rows[0], np.int32)
        for i, (row, source) in enumerate(zip(rows, sources)):
            ids[i, : len(source)], index[i] = source, row
        ids[len(rows):] = ids[0]
        return {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int32), "slots": index}

    def _grow_source(self, bucket: int) -> int:
        """Grow the state's source side to hold `bucket` positions where it is shorter; returns its stored length."""
        stored_targets, stored_source = self.stored_target_lengths, self.stored_lengths[1]
        if bucket > stored_source:
            self._store_at(stored_targets, bucket)
            _, stored_source = self.stored_lengths
        return stored_source

    def insert(self, slots: list[int], sources: list[np.ndarray]) -> int:
        """Encode `sources` (1-D id arrays, no padding) and write them into `slots`; returns their source bucket."""
        bucket = self.model.compile_config.encoder_bucket(max(len(s) for s in sources))
        inputs = self._encoder_inputs(slots, sources, bucket)
        stored_source = self._grow_source(bucket)
        self._update_encoder_side(SlotEncoderKey(bucket, len(inputs["slots"]), stored_source), **inputs)
        return bucket

    def stage(self, sources: list[np.ndarray], held: Iterable[StagedRow] = ()) -> list[StagedRow]:
        """Encode `sources` (one source bucket, at most B minus the rows held) into free rows of the staging area of
        their bucket, for `insert_staged` later; `held`: the rows staged before and not yet inserted (kept). Returns
        where each source waits."""
        build = self._build_shapes
        longest = max(len(s) for s in sources)
        bucket = self.model.compile_config.encoder_bucket(longest)
        if any(self.model.compile_config.encoder_bucket(len(s)) != bucket for s in sources):
            raise ValueError("stage() takes sources of one source bucket; group them by bucket")
        staged = build.staged_length(bucket)
        taken = {h.row for h in held if h.length == staged}
        rows = [row for row in range(self.batch_size) if row not in taken][: len(sources)]
        if len(rows) < len(sources):
            raise ValueError(f"{len(sources)} sources to stage, {len(rows)} staging rows free of {self.batch_size}")
        length = build.stage_length(longest)
        inputs = self._encoder_inputs(rows, sources, length)
        area = self._staging.pop(staged, None) or self._zeros(staging_shapes(self.shapes, staged))  # donated below
        out = self.model.run_program(SlotEncoderKey(length, len(inputs["slots"]), staged),
                                     **inputs, **{name[len(STAGED):]: t for name, t in area.items()})
        self._staging[staged] = {STAGED + name: t for name, t in out.items()}
        return [StagedRow(staged, row, bucket) for row in rows]

    def insert_staged(self, staged: StagedRow, slots: list[int]) -> None:
        """Copy the staged row into `slots` (a beam request's: one per beam)."""
        area = self._staging.get(staged.length)
        if area is None:
            raise RuntimeError("no staged rows of that length: call stage() first")
        stored_source = self._grow_source(staged.bucket)
        for slot in slots:
            self._update_encoder_side(SlotCopyKey(stored_source, staged.length), row=np.array([staged.row], np.int32),
                                      slot=np.array([slot], np.int32), **area)

    def _update_encoder_side(self, key, **inputs) -> None:
        """Run program `key`, which updates the state's encoder side (cross K/V and source mask) in place."""
        state = self._state()
        self._tensors = None                                   # donated below: gone if the call fails
        encoder_state = {name: state[name] for name in slot_state_shapes(self.shapes)}
        out = self.model.run_program(key, **inputs, **encoder_state)
        self._tensors = {**state, **out}

    def wait(self) -> None:
        """Block until the programs queued so far have finished (they run asynchronously): for timings."""
        for tensor in self._state().values():
            tensor.wait()

    def step(self, tokens: np.ndarray, positions: np.ndarray, active: np.ndarray, source_len: int,
             head: str = "greedy", **head_inputs) -> np.ndarray | dict[str, np.ndarray]:
        """Feed tokens[b] at positions[b] to every slot. Returns the greedy next token of each slot (-1 where not
        active), with head="sample" the token drawn with `head_inputs` (temperature, top_k, top_p, uniform: [B]
        each, `sampling.head_inputs`), with head="logits" the float32 logits [B, vocab] (for checks and custom
        loops), or with head="beam" (`head_inputs`: forced, beam_score, beam_group, [B] each; `beam_head.py`) a dict
        of `next_token` [B] and the beams' candidates `beam_scores`, `beam_tokens`, `beam_sources` [B, K]. Inactive
        slots compute and write their own cache rows only, at positions a later occupant rewrites before reading
        them."""
        if head not in ("greedy", "logits", "sample", "beam"):
            raise ValueError(f"slot steps have a greedy, sample, beam or logits head, got {head!r}")
        buckets = self._target_buckets(positions, active)
        self._store_at(buckets, source_len)
        state = self._state()
        self._tensors = None
        key = SlotStepKey(source_len, head, buckets[0], self.long_rows, buckets[-1] if self.long_rows else 0)
        out = self.model.run_program(key, input_ids=tokens.astype(np.int32)[:, None],
                                     start=positions.astype(np.int32), active=active.astype(np.int32),
                                     **head_inputs, **state)
        self._tensors = {**state, **{name: out[name] for name in self._cache_names}}
        if head == "logits":
            return np.array(out["logits"].numpy(0)[: self.model.config.vocab_size].T, np.float32, order="C")
        if head == "beam":
            return {name: out[name].numpy(0) for name in ("next_token", "beam_scores", "beam_tokens", "beam_sources")}
        return out["next_token"].numpy(0).astype(np.int64)

    def target_length(self, positions: int) -> int:
        """The target length a cache segment whose furthest active slot holds `positions` is read at by a step
        (`ProgramShapes.slot_target_lengths`: on XLA CPU finer than the target buckets, and stored at it)."""
        return self._build_shapes.slot_target_length(positions)

    def _target_buckets(self, positions: np.ndarray, active: np.ndarray) -> tuple[int, ...]:
        """The target length each cache segment is read at for a step writing `positions`: that of its furthest
        active slot (`target_length`; the smallest where none is active), the long segment's at least the short
        one's."""
        out = []
        for seg in self.segments:
            rows = [b for b in seg.slots if active[b]]
            out.append(self.target_length(int(positions[rows].max()) + 1 if rows else 1))
        return tuple(out[:1] + [max(out)] * (len(out) - 1))

    def reorder(self, index: np.ndarray) -> None:
        """Slot b's self-attention cache becomes slot index[b]'s (index: [B], identity outside beam requests). With
        two cache segments, a slot of one may take one of the other only where that segment is stored past the
        position of the request moving in (true of a request's beams, which share a position)."""
        lengths = self.stored_target_lengths
        state = self._state()
        self._tensors = None
        caches = {name: state[name] for name in self._cache_names}
        key = SlotReorderKey(lengths[0], self.long_rows, lengths[-1] if self.long_rows else 0)
        out = self.model.run_program(key, index=index.astype(np.int32), **caches)
        self._tensors = {**state, **out}

    def move(self, short_slot: int, long_slot: int) -> None:
        """Swap the requests of `short_slot` and `long_slot` (of the short and the long cache segment): their
        self-attention caches and encoder sides. The request moving out of the long segment must be behind the one
        moving in (the short segment is stored past its positions: `slot_move.py`)."""
        if not self.long_rows or short_slot not in self.segments[0].slots or long_slot not in self.long_slots:
            raise ValueError(f"a move swaps a short slot (0..{self.batch_size - self.long_rows - 1}) with a long one "
                             f"({list(self.long_slots)}), got {short_slot} and {long_slot}")
        lengths, source = self.stored_target_lengths, self.stored_lengths[1]
        slots = {"a": np.array([short_slot], np.int32), "b": np.array([long_slot], np.int32)}
        state = self._state()
        caches = {name: state[name] for name in self._cache_names}
        encoder_side = {name: state[name] for name in slot_state_shapes(self.shapes)}
        cache_key, encoder_key = SlotMoveCachesKey(lengths[0], self.long_rows, lengths[-1]), SlotMoveKey(source)
        cache_rows = self.model.run_program(cache_key, **slots, **caches)               # "take": the state stays
        encoder_rows = self.model.run_program(encoder_key, **slots, **encoder_side)
        self._tensors = None                                                            # "put": donated below
        out = self.model.run_program(replace(cache_key, part="put"), **slots, **caches, **cache_rows)
        out |= self.model.run_program(replace(encoder_key, part="put"), **slots, **encoder_side, **encoder_rows)
        self._tensors = {**state, **out}
