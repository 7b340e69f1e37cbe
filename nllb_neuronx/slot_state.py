"""The slot engine's device state, and the programs that change it: insert new requests, step every slot, reorder.

State (on the device, updated in place by aliasing), B = the model's batch_size slots:

    cache_k.<i>, cache_v.<i>  [B, N_local, T_stored, D]    layer i's self-attention, row b at slot b's own positions
    cross_k.<i>, cross_v.<i>  [B, N_local, S_stored, D]    layer i's cross-attention
    encoder_attention_mask    s32[B, S_stored]

`insert()` runs the slot encoder (`slot_encoder.py`) on up to B new sources at their length bucket and writes them
into the chosen slots. Encode-ahead: `stage()` runs it on up to B queued sources into rows of a staging area (the
same tensors at the largest source bucket, `slot_copy.staging_shapes`), and `insert_staged()` copies one staged row
into a slot when it frees (`slot_copy.py`). `step()` runs the decoder (`decoder.py`) once, one token per slot, each
slot at its own position; it reads the cache up to the target bucket of the furthest active slot and the
cross-attention K/V up to the largest source bucket among the active slots. `reorder()` makes slots copies of other
slots' self-attention caches (beam search, `slot_reorder.py`).

Stored lengths (`ProgramShapes.stored_lengths`): on Neuron the largest buckets, for good (a step reads its buckets of
them). On XLA CPU, where a step reads every stored position, the state follows what the active slots need: before a
step it is resized (`resize.py`) to the target bucket of the furthest active slot and the largest active source
bucket, and an insert grows the source side to the new sources' bucket where it is longer, so a step of short rows
does not pay for a long row that has finished.
"""

from __future__ import annotations

import numpy as np

from nllb_neuronx.program_key import ResizeKey, SlotCopyKey, SlotEncoderKey, SlotReorderKey, SlotStepKey
from nllb_neuronx.slot_copy import STAGED, staging_shapes
from nllb_neuronx.slot_encoder import insert_sizes, slot_state_shapes


class SlotState:
    """Device state of B decode slots. Not thread-safe: one thread (the engine's loop) calls it."""

    def __init__(self, model):
        if model.runtime is None:
            raise RuntimeError("call model.to_neuron() first: it starts the runtime and uploads the weights")
        self.model, self.shapes = model, model.shapes
        self.batch_size = model.batch_size
        self.insert_sizes = insert_sizes(self.batch_size)
        self._build_shapes = model.programs.build_shapes          # the runtime's backend: how the state is stored
        self._tensors: dict[str, object] | None = None
        self._staging: dict[str, object] | None = None             # encode-ahead rows, made on first use
        self.resizes = 0                                           # resize program calls so far

    def _smallest(self) -> tuple[int, int]:
        c = self.model.compile_config
        return self._build_shapes.stored_lengths(c.n_positions[0], c.encoder_buckets[0])

    @property
    def stored_lengths(self) -> tuple[int, int]:
        """The (target, source) positions the state is stored at now (its tensors' lengths)."""
        state = self._state()
        return state[self.shapes.cache_names()[0]].shape.dims[2], state["encoder_attention_mask"].shape.dims[1]

    def reset(self) -> None:
        """Fresh zero state at the smallest stored lengths (also after a failed device call, whose donated buffers
        may be gone). Staged rows are kept (a failed staging call leaves none: they are made again on first use)."""
        target, source = self._smallest()
        shapes = {**self.shapes.cache_shapes(target), **slot_state_shapes(self.shapes, source)}
        self._tensors = self._zeros(shapes)

    def _zeros(self, shapes: dict) -> dict[str, object]:
        return {name: self.model.runtime.put(np.zeros(s.dims, s.dtype.numpy)) for name, s in shapes.items()}

    def _state(self) -> dict[str, object]:
        if self._tensors is None:
            self.reset()
        return self._tensors

    def _store_at(self, target_len: int, source_len: int) -> None:
        """Resize the state to `stored_lengths(target_len, source_len)`, one side at a time (a no-op where the state
        keeps one size)."""
        wanted = self._build_shapes.stored_lengths(target_len, source_len)
        state = self._state()
        for side, have, want in zip(("target", "source"), self.stored_lengths, wanted):
            if have != want:
                names = self.shapes.cache_names() if side == "target" else list(slot_state_shapes(self.shapes))
                self._tensors = None                                   # inputs of a program: rebuilt if it fails
                out = self.model.run_program(ResizeKey(side, have, want), **{n: state[n] for n in names})
                state = {**state, **out}
                self._tensors = state
                self.resizes += 1

    def _encoder_inputs(self, rows: list[int], sources: list[np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        """(source bucket, the slot encoder's inputs) writing `sources` (1-D id arrays, no padding) into `rows`: a
        sub-batch padded to an insert size with copies of its first row (same row, so row 0 is written last)."""
        pad = self.model.config.pad_token_id
        bucket = self.model.compile_config.encoder_bucket(max(len(s) for s in sources))
        k = next(k for k in self.insert_sizes if k >= len(rows))
        ids = np.full((k, bucket), pad, np.int32)
        index = np.full(k, rows[0], np.int32)
        for i, (row, source) in enumerate(zip(rows, sources)):
            ids[i, : len(source)], index[i] = source, row
        ids[len(rows):] = ids[0]
        return bucket, {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int32), "slots": index}

    def _grow_source(self, bucket: int) -> int:
        """Grow the state's source side to hold `bucket` positions where it is shorter; returns its stored length."""
        stored_target, stored_source = self.stored_lengths
        if bucket > stored_source:
            self._store_at(stored_target, bucket)
            _, stored_source = self.stored_lengths
        return stored_source

    def insert(self, slots: list[int], sources: list[np.ndarray]) -> int:
        """Encode `sources` (1-D id arrays, no padding) and write them into `slots`; returns their source bucket."""
        bucket, inputs = self._encoder_inputs(slots, sources)
        stored_source = self._grow_source(bucket)
        self._update_encoder_side(SlotEncoderKey(bucket, len(inputs["slots"]), stored_source), **inputs)
        return bucket

    def stage(self, rows: list[int], sources: list[np.ndarray]) -> int:
        """Encode `sources` into staging `rows` (0..B-1) for `insert_staged` later; returns their source bucket."""
        bucket, inputs = self._encoder_inputs(rows, sources)
        staging = self._staging or self._zeros(staging_shapes(self.shapes))
        self._staging = None                                   # donated below: gone if the call fails
        out = self.model.run_program(SlotEncoderKey(bucket, len(inputs["slots"]), self.shapes.max_source_length),
                                     **inputs, **{name[len(STAGED):]: t for name, t in staging.items()})
        self._staging = {STAGED + name: t for name, t in out.items()}
        return bucket

    def insert_staged(self, slot: int, row: int, bucket: int) -> None:
        """Copy staging `row` (staged at source `bucket`) into `slot`."""
        if self._staging is None:
            raise RuntimeError("no staged rows: call stage() first")
        stored_source = self._grow_source(bucket)
        self._update_encoder_side(SlotCopyKey(stored_source), row=np.array([row], np.int32),
                                  slot=np.array([slot], np.int32), **self._staging)

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
        bucket = self.model.compile_config.decoder_bucket(int(positions[active].max()) + 1)
        self._store_at(bucket, source_len)
        state = self._state()
        self._tensors = None
        out = self.model.run_program(
            SlotStepKey(source_len, head, bucket), input_ids=tokens.astype(np.int32)[:, None],
            start=positions.astype(np.int32), active=active.astype(np.int32), **head_inputs, **state)
        self._tensors = {**state, **{name: out[name] for name in self.shapes.cache_names()}}
        if head == "logits":
            return np.array(out["logits"].numpy(0)[: self.model.config.vocab_size].T, np.float32, order="C")
        if head == "beam":
            return {name: out[name].numpy(0) for name in ("next_token", "beam_scores", "beam_tokens", "beam_sources")}
        return out["next_token"].numpy(0).astype(np.int64)

    def reorder(self, index: np.ndarray) -> None:
        """Slot b's self-attention cache becomes slot index[b]'s (index: [B], identity outside beam requests)."""
        stored_target, _ = self.stored_lengths
        state = self._state()
        self._tensors = None
        caches = {name: state[name] for name in self.shapes.cache_names()}
        out = self.model.run_program(SlotReorderKey(stored_target), index=index.astype(np.int32), **caches)
        self._tensors = {**state, **out}
