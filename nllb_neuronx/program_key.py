"""The typed records of NLLBForSampling's public hooks: which program (the `ProgramKey` family: one key type per
kind of program, each able to build its module), a program fetched (ProgramEvent), and how to draw tokens
(`Sampling`, the same class as `SamplingParams`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import hlo
from nllb_neuronx.decoder import build_decoder
from nllb_neuronx.encoder import build_encoder
from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.reorder import build_reorder
from nllb_neuronx.slot_copy import build_slot_copy
from nllb_neuronx.slot_encoder import build_slot_encoder
from nllb_neuronx.slot_move import build_slot_move, build_slot_move_caches
from nllb_neuronx.slot_reorder import build_slot_reorder
from nllb_neuronx.resize import build_resize
from nllb_neuronx.slot_segments import Segment
from nllb_neuronx.sampling import SamplingParams


@dataclass(frozen=True)
class ProgramKey:
    """One program of a model's shape; the base of the key family. A key names a program within one model (the batch
    size, tp, amp and the model come from `ProgramShapes`) and builds it: `key.build(shapes)` -> `hlo.Module`. `kind`
    says which program: the lockstep path's "encoder", "reorder", "decoder", the slot engine's "slot_encoder",
    "slot_copy", "slot_step", "slot_reorder", "slot_move", "slot_move_caches", and "resize" (both)."""

    kind: ClassVar[str] = ""
    quantized: bool = field(default=False, kw_only=True)  # int8 weights (the model's `CompileConfig.quantization`)

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        raise NotImplementedError(f"{type(self).__name__} does not say how to build its program")

    def canonical(self, shapes: ProgramShapes) -> "ProgramKey":
        """The key of the same program under its one listed name (a key whose program another key builds too); it
        says whether the model is quantized, whatever the caller wrote."""
        return self if self.quantized == shapes.quantized else replace(self, quantized=shapes.quantized)

    def _spelled_out(self, shapes: ProgramShapes, **defaults: int) -> "ProgramKey":
        """`canonical` for a key with stored lengths whose 0 means the largest bucket: those fields set to `defaults`."""
        unset = {name: value for name, value in defaults.items() if not getattr(self, name)}
        return ProgramKey.canonical(replace(self, **unset) if unset else self, shapes)


@dataclass(frozen=True)
class EncoderKey(ProgramKey):
    """The encoder of a source bucket: ids -> encoder states and every decoder layer's cross-attention K/V."""

    kind: ClassVar[str] = "encoder"
    source_len: int

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_encoder(shapes, self.source_len)


@dataclass(frozen=True)
class ReorderKey(ProgramKey):
    """The lockstep reorder of a source bucket: batch rows of the caches and cross K/V gathered (beam search), the
    caches stored at `target_len` positions (0: the largest bucket)."""

    kind: ClassVar[str] = "reorder"
    source_len: int
    target_len: int = 0

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_reorder(shapes, self.source_len, self.target_len or None)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        return self._spelled_out(shapes, target_len=shapes.compile.max_target_length)


@dataclass(frozen=True)
class DecoderKey(ProgramKey):
    """A lockstep decoder program: its token-choice head ("greedy", "sample" or "logits"), the tokens it takes per
    call (1, or 2 for the decoder start + language prefix), its target bucket, for a source bucket; `steps` greedy
    decode steps unrolled into one call (1: one step; more only with the greedy head and one new token)."""

    kind: ClassVar[str] = "decoder"
    source_len: int
    head: str
    new_tokens: int
    target_len: int
    steps: int = 1

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        cache_len = shapes.stored_target_length(self.target_len)
        return build_decoder(shapes, self.new_tokens, self.target_len, self.source_len, self.head,
                             steps=self.steps, cache_len=cache_len)


@dataclass(frozen=True)
class SlotEncoderKey(ProgramKey):
    """The slot engine's encoder: `rows` new requests (a sub-batch padded up to this) at a source bucket, written into
    chosen slots of the state stored at `stored_len` source positions (0: the largest bucket)."""

    kind: ClassVar[str] = "slot_encoder"
    source_len: int
    rows: int
    stored_len: int = 0

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_slot_encoder(shapes, self.rows, self.source_len, self.stored_len or None)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        return self._spelled_out(shapes, stored_len=shapes.max_source_length)


@dataclass(frozen=True)
class SlotCopyKey(ProgramKey):
    """The slot engine's copy of one request encoded ahead from its staging row (the staging area stored at
    `staged_len` source positions) into a slot of the state stored at `stored_len` (0: the largest bucket);
    `slot_copy.py`."""

    kind: ClassVar[str] = "slot_copy"
    stored_len: int = 0
    staged_len: int = 0

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_slot_copy(shapes, self.stored_len or None, self.staged_len or None)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        return self._spelled_out(shapes, stored_len=shapes.max_source_length, staged_len=shapes.max_source_length)


@dataclass(frozen=True)
class SlotStepKey(ProgramKey):
    """The slot engine's decode step: one token per slot, each at its own position, reading `target_len` cache
    positions and `source_len` of the cross K/V, from the state stored at `shapes.stored_lengths` of them. With
    `long_rows` > 0 the caches are in two row segments (`slot_segments.py`): `target_len` is the short one's, stored
    and read whole, and `long_len` (>= `target_len`) the long one's."""

    kind: ClassVar[str] = "slot_step"
    source_len: int
    head: str
    target_len: int
    long_rows: int = 0
    long_len: int = 0

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        cache_len, cross_len = shapes.stored_lengths(self.target_len, self.source_len)
        return build_decoder(shapes, 1, self.target_len, self.source_len, self.head, cross_len=cross_len,
                             cache_len=cache_len, long_rows=self.long_rows, long_len=self.long_len)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        """At the largest source bucket the slot step of an unsplit state reads all of the stored cross K/V and its
        caches are stored as the lockstep path's: the lockstep decoder's one-token program of that bucket, the same
        HLO, listed once."""
        if self.source_len == shapes.max_source_length and not self.long_rows:
            return DecoderKey(self.source_len, self.head, 1, self.target_len, quantized=shapes.quantized)
        return super().canonical(shapes)


@dataclass(frozen=True)
class SlotReorderKey(ProgramKey):
    """The slot engine's reorder of the self-attention cache between slots (beam search), the
    caches stored at `target_len` positions (0: the largest bucket); with `long_rows` > 0 in two row segments
    (`slot_segments.py`), the long one at `long_len`."""

    kind: ClassVar[str] = "slot_reorder"
    target_len: int = 0
    long_rows: int = 0
    long_len: int = 0

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_slot_reorder(shapes, self.target_len or None, self.long_rows, self.long_len)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        return self._spelled_out(shapes, target_len=shapes.compile.max_target_length)


@dataclass(frozen=True)
class SlotMoveKey(ProgramKey):
    """One part ("take" the two rows, "put" them swapped) of the slot engine's swap of two slots' encoder sides
    (cross K/V, source mask), stored at `stored_len` source positions (0: the largest bucket); `slot_move.py`."""

    kind: ClassVar[str] = "slot_move"
    stored_len: int = 0
    part: str = "take"

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_slot_move(shapes, self.stored_len or None, self.part)

    def canonical(self, shapes: ProgramShapes) -> ProgramKey:
        return self._spelled_out(shapes, stored_len=shapes.max_source_length)


@dataclass(frozen=True)
class SlotMoveCachesKey(ProgramKey):
    """One part ("take" the two rows, "put" them swapped) of the slot engine's swap of a short slot's and a long
    slot's self-attention caches (`slot_move.py`): the short segment stored at `target_len` positions, the
    `long_rows` long slots at `long_len` >= `target_len`."""

    kind: ClassVar[str] = "slot_move_caches"
    target_len: int
    long_rows: int
    long_len: int
    part: str = "take"

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_slot_move_caches(shapes, self.target_len, self.long_rows, self.long_len, self.part)


@dataclass(frozen=True)
class ResizeKey(ProgramKey):
    """A decode state moved from `from_len` to `to_len` stored positions on one side: "target" (the self-attention
    caches, lockstep or slots; with `segment`, the slot caches of one row segment, `slot_segments.py`) or "source"
    (the slot engine's cross-attention K/V and source mask); `resize.py`."""

    kind: ClassVar[str] = "resize"
    side: str
    from_len: int
    to_len: int
    segment: Segment | None = None

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return build_resize(shapes, self.side, self.from_len, self.to_len, self.segment)


@dataclass(frozen=True)
class CustomProgramKey(ProgramKey):
    """A program the caller builds (a variant of the decoder, a part of a step for profiling), run through the
    registry like the model's own (`model.run_program`, the weights fed by name): fetched once by `name`, built by
    `builder()`."""

    kind: ClassVar[str] = "custom"
    name: str
    builder: Callable[[], hlo.Module] = field(compare=False, repr=False)

    def build(self, shapes: ProgramShapes) -> hlo.Module:
        return self.builder()


@dataclass(frozen=True)
class ProgramEvent:
    """What `add_program_observer` callbacks receive: a program this model fetched for the first time, and the
    seconds it took (HLO build and serialization, then an XLA compile or a load from the caches)."""

    key: ProgramKey
    seconds: float


Sampling = SamplingParams  # the one sampling record (nllb_neuronx/sampling.py), under its former name
