"""Shapes shared by the programs: the model, the compile setting, and the per-rank weight parameters."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hlo.types import Shape, dtype_of, f32, s8

from nllb_neuronx import quantize, sharding
from nllb_neuronx.config import CompileConfig, ModelConfig
from nllb_neuronx.layers import Parallel


SELF_CACHE = ("cache_k", "cache_v")
CROSS_CACHE = ("cross_k", "cross_v")


def layer_names(groups: tuple[str, ...], layers: int) -> list[str]:
    """Per-layer parameter names of cache groups, group by group: ("cache_k", "cache_v"), 2 -> cache_k.0, cache_k.1,
    cache_v.0, cache_v.1. Each layer's cache is its own parameter: on XLA CPU a slice of a stacked [L, ...] cache is
    a copy into a fresh buffer (page faults on every call), while a whole parameter is read in place by the dot."""
    return [f"{group}.{i}" for group in groups for i in range(layers)]


def layer_name(group: str, layer: int) -> str:
    """The parameter name of `layer`'s cache in `group` ("cache_k", "cross_v", ...)."""
    return f"{group}.{layer}"


@dataclass(frozen=True)
class ProgramShapes:
    model: ModelConfig
    compile: CompileConfig

    @property
    def batch_size(self) -> int:
        return self.compile.batch_size

    @property
    def layout(self) -> sharding.Layout:
        return sharding.Layout(self.model, self.compile.tp_degree)

    @property
    def parallel(self) -> Parallel:
        return Parallel(self.compile.tp_degree, self.layout.heads_local, self.model.head_dim,
                        quantize.form_for_backend(self.compile.backend))

    @property
    def quantized(self) -> bool:
        return self.compile.quantization is not None

    def for_backend(self, backend: str) -> "ProgramShapes":
        """These shapes, built for `backend` (what a runtime's programs are built with: the int8 linears' HLO form
        depends on it, `quantize.form_for_backend`)."""
        if backend == self.compile.backend:
            return self
        return ProgramShapes(self.model, dataclasses.replace(self.compile, backend=backend))

    @property
    def reads_stored_caches(self) -> bool:
        """Whether a decoder reads every stored cache position (masked) rather than only its buckets' (the target
        bucket of the self-attention caches, the source bucket of cross-attention K/V stored longer): on XLA CPU a
        shorter read is a slice, which XLA copies into a fresh buffer on every call (page faults included), while a
        whole parameter is read in place. 600M shape, batch 8, 512 target positions and 128 source positions stored
        (`benchmarks/slot_costs.py`, quiet VM): a step reading 64 target and 32 source positions took 199 ms, one
        reading all of both 104 ms. Other backends read their buckets (a slice is an access pattern on Neuron)."""
        return self.compile.backend == "xla-cpu"

    @property
    def reorders_in_place(self) -> bool:
        """Whether the reorder programs (`reorder.py`, `slot_reorder.py`) write the gathered rows over the donated
        caches (aliased), as NxDI updates its caches: everywhere but XLA CPU. There a gather cannot read and write one
        buffer, so XLA copies every aliased cache before gathering; into fresh buffers it takes half the time (24
        caches [4, 16, 512, 64], jax: 69.8 ms aliased, 33.6 ms not; the 600M lockstep reorder at batch 4: 81.4 vs
        24.8 ms at 512 positions, 15.4 vs 5.2 ms at 64), the old ones dropped after the call."""
        return self.compile.backend != "xla-cpu"

    def stored_lengths(self, target_len: int, source_len: int) -> tuple[int, int]:
        """The (target, source) positions a decode state stores while its steps read the first `target_len` target
        and `source_len` source positions: the same where a decoder reads every stored position (XLA CPU: the
        lockstep caches grow with the batch's position, the slot engine's state follows its active slots, both by
        `resize.py`, so a step reads no more than it needs); elsewhere the largest buckets, one size for good (a step
        reads its buckets of it). The lockstep path stores cross-attention K/V at its own bucket everywhere."""
        return self.stored_target_length(target_len), self.stored_source_length(source_len)

    def stored_target_length(self, target_len: int) -> int:
        """The target positions of `stored_lengths` (the lockstep caches need only this side)."""
        return target_len if self.reads_stored_caches else self.compile.max_target_length

    def stored_source_length(self, source_len: int) -> int:
        """The source positions of `stored_lengths`."""
        return source_len if self.reads_stored_caches else self.max_source_length

    def state_target_lengths(self) -> tuple[int, ...]:
        """Every target length a decode state's caches may be stored at (`stored_lengths`)."""
        return tuple(self.compile.n_positions) if self.reads_stored_caches else (self.compile.max_target_length,)

    def slot_target_lengths(self) -> tuple[int, ...]:
        """The target lengths the slot engine's steps read its self-attention caches at (`SlotStepKey.target_len`,
        `long_len`). Elsewhere the target buckets (read from a state stored at the largest, each length one more
        compile with neuronx-cc). On XLA CPU, where a step reads and stores as many positions (`reads_stored_caches`),
        the buckets with one more length halfway between each two (rounded up to a multiple of 8): 64, 128, 256, 512
        -> 64, 96, 128, 192, 256, 384, 512. A slot segment is stored at the length of its furthest active row, and
        a step's time grows with the positions it reads (600M, batch 8: about 0.01 ms a row-position), so the
        halfway lengths cut a fifth of the positions the slot engine's steps read on the corpus benchmark's lines
        (the engine's own schedule on them: 3.48 M -> 2.87 M row-positions over its 1,920 steps, 13 more resizes)
        for about 2.5 times the slot step programs. The lockstep path keeps the buckets."""
        buckets = tuple(self.compile.n_positions)
        if not self.reads_stored_caches:
            return buckets
        halfway = {-(-(low + high) // 16) * 8 for low, high in zip(buckets, buckets[1:])}
        return tuple(sorted(set(buckets) | {t for t in halfway if t < buckets[-1]}))

    def slot_target_length(self, length: int) -> int:
        """The smallest of `slot_target_lengths` that holds `length` positions."""
        self.compile.decoder_bucket(length)                   # a clear error where no bucket holds it
        return next(t for t in self.slot_target_lengths() if t >= length)

    def state_source_lengths(self) -> tuple[int, ...]:
        """Every source length the slot engine's state may be stored at (`stored_lengths`)."""
        return tuple(self.compile.encoder_buckets) if self.reads_stored_caches else (self.max_source_length,)

    def stage_lengths(self) -> tuple[int, ...]:
        """The source lengths the slot engine encodes requests ahead at (`SlotState.stage`). On XLA CPU each encoder
        bucket's span in quarters, rounded up to multiples of 8 (buckets 32, 64, 128: 8, 16, 24, 32, 40, 48, 56,
        64, 80, ..., 128): there the encoder's time follows the positions it computes (600M shape, 8 rows: about
        60 ms a call and 1.5 ms a row-position, `benchmarks/slot_costs.py --stage-lengths`), and its length fixes no
        other program (the staged rows wait at their bucket, `staged_length`, and are copied into the state at its
        own length), so a sub-batch is padded by at most a quarter span. Elsewhere the encoder buckets: each length
        more is a compile of the encoder (minutes with neuronx-cc)."""
        buckets = self.compile.encoder_buckets
        if not self.reads_stored_caches:
            return tuple(buckets)
        lengths, low = set(), 0
        for bucket in buckets:
            lengths.update(min(bucket, -(-(low + (bucket - low) * i // 4) // 8) * 8) for i in range(1, 5))
            low = bucket
        return tuple(sorted(lengths))

    def stage_length(self, length: int) -> int:
        """The smallest of `stage_lengths` that holds `length` source tokens."""
        self.compile.encoder_bucket(length)                   # a clear error where no bucket holds it
        return next(s for s in self.stage_lengths() if s >= length)

    def staged_length(self, bucket: int) -> int:
        """The source positions rows encoded ahead at source bucket `bucket` wait at (`SlotState.stage`): the bucket
        where the state is stored as its rows need (XLA CPU), elsewhere the largest, as the state."""
        return self.stored_source_length(bucket)

    @property
    def name_suffix(self) -> str:
        """The end of every program's name: tp, then the amp where it is not f32 and `_s8` for int8 weights, so the
        programs of models that differ only there have different names (export-hlo writes files by name)."""
        amp = "" if self.compile.amp == "f32" else f"_{self.compile.amp}"
        return f"_tp{self.parallel.tp}{amp}{'_s8' if self.quantized else ''}"

    @property
    def dtype(self):
        return dtype_of(self.compile.amp)

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.model.d_model) if self.model.scale_embedding else 1.0

    @property
    def position_rows(self) -> int:
        """Rows of the sinusoidal table: every position id a program can look up (pad + 1 + longest sequence)."""
        longest = max(self.compile.encoder_buckets[-1], self.compile.max_target_length)
        return self.model.pad_token_id + 1 + longest

    @property
    def positions_shape(self) -> Shape:
        return f32[self.position_rows, self.model.d_model]

    @property
    def max_source_length(self) -> int:
        """The largest encoder bucket: the source length the slot engine stores every slot's cross K/V at."""
        return self.compile.encoder_buckets[-1]

    def cache_shape(self, target_len: int | None = None) -> Shape:
        """One decoder layer's self-attention cache, keys or values: [B, N_local, T, D], T = `target_len` stored
        positions (default T_max, the largest target bucket)."""
        m, t = self.model, target_len or self.compile.max_target_length
        return self.dtype[self.batch_size, self.layout.heads_local, t, m.head_dim]

    def cross_shape(self, source_len: int) -> Shape:
        """One decoder layer's cross-attention keys or values: [B, N_local, S, D]."""
        m = self.model
        return self.dtype[self.batch_size, self.layout.heads_local, source_len, m.head_dim]

    def cache_names(self) -> list[str]:
        """The self-attention caches' parameter names, keys then values, one per decoder layer (`layer_names`)."""
        return layer_names(SELF_CACHE, self.model.decoder_layers)

    def cross_names(self) -> list[str]:
        """The cross-attention K/V parameter names, keys then values, one per decoder layer."""
        return layer_names(CROSS_CACHE, self.model.decoder_layers)

    def cache_shapes(self, target_len: int | None = None) -> dict[str, Shape]:
        """Every self-attention cache parameter at `target_len` stored positions (default T_max), by name."""
        return {name: self.cache_shape(target_len) for name in self.cache_names()}

    def cross_shapes(self, source_len: int) -> dict[str, Shape]:
        """Every cross-attention K/V parameter at `source_len` positions, by name."""
        return {name: self.cross_shape(source_len) for name in self.cross_names()}

    def device_bytes(self) -> tuple[int, int]:
        """(weights, state) in bytes over all ranks: the uploaded weights and positions table, and the caches, the
        cross-attention K/V and the encoder states at the largest source bucket."""
        tp, longest = self.compile.tp_degree, self.compile.encoder_buckets[-1]
        names = [w.name for w in sharding.all_weights(self.model)]
        weights = sum(shape.nbytes for _, shape in weight_params(names, self)) + self.positions_shape.nbytes
        layers = self.model.decoder_layers
        state = 2 * layers * (self.cache_shape().nbytes + self.cross_shape(longest).nbytes) + \
            self.dtype[self.batch_size, longest, self.model.d_model].nbytes
        return tp * weights, tp * state

    def encoder_weight_names(self) -> list[str]:
        m = self.model
        names = ["shared.weight"]
        for i in range(m.encoder_layers):
            names += [s.name for s in sharding.encoder_layer_weights(i)]
        names += ["encoder.layer_norm.weight", "encoder.layer_norm.bias"]
        for i in range(m.decoder_layers):
            names += [f"decoder.layers.{i}.encoder_attn.{kv}_proj.{t}" for kv in "kv" for t in ("weight", "bias")]
        return names

    def decoder_weight_names(self) -> list[str]:
        names = ["shared.weight"]
        for i in range(self.model.decoder_layers):
            cross_kv = (f"decoder.layers.{i}.encoder_attn.k_proj", f"decoder.layers.{i}.encoder_attn.v_proj")
            names += [s.name for s in sharding.decoder_layer_weights(i) if not s.name.startswith(cross_kv)]
        return names + ["decoder.layer_norm.weight", "decoder.layer_norm.bias"]


def weight_params(names: list[str], shapes: ProgramShapes) -> list[tuple[str, Shape]]:
    """(parameter name, per-rank shape) of each named weight, in the amp dtype; a quantized weight (`quantize.py`) is
    s8 and followed by its f32 scales [out_local]."""
    specs = {s.name: s for s in sharding.all_weights(shapes.model)}
    quantization = shapes.compile.quantization
    out = []
    for name in names:
        spec = specs[name]
        dims = sharding.shard_shape(spec, sharding.hf_shape(spec, shapes.model), shapes.layout)
        if quantize.is_quantized(spec, quantization):
            out += [(name, s8[dims]), (quantize.scale_name(name), f32[dims[0]])]
        else:
            out.append((name, Shape(shapes.dtype, dims)))
    return out

