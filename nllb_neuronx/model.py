"""NLLBForSampling: owns the compiled programs, the device weights, the KV caches, and the decode loop.

    model = NLLBForSampling.from_pretrained(path, batch_size=4, tp_degree=2)
    model.to_neuron()                                   # upload weights; programs compile on first use, once
    ids = model.sample(input_ids, attention_mask, max_new_tokens=64, forced_bos_token_id=fra_id)

Low level, for custom decode loops: `encode(input_ids, attention_mask)`, then `decode_step(token_ids)` -> logits
for the last new token of each row, repeatedly; `reset()` forgets the target side.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import hlo.runtime
from hlo.runtime import PerRank

from nllb_neuronx import artifacts, sharding
from nllb_neuronx.backend import select_backend
from nllb_neuronx.config import CompileConfig, ModelConfig
from nllb_neuronx.decoder import build_decoder
from nllb_neuronx.encoder import build_encoder
from nllb_neuronx.generation_defaults import GenerationDefaults
from nllb_neuronx.program_key import ProgramEvent, ProgramKey, Sampling
from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.sampling import head_inputs
from nllb_neuronx.reorder import build_reorder
from nllb_neuronx.weights import Checkpoint, read_config, resolve_path

log = logging.getLogger(__name__)


@dataclass
class _Source:
    """The encoded batch: rows in use, source bucket, and what the decoder reads."""

    rows: int
    source_len: int
    encoder_attention_mask: np.ndarray      # s32[B, S]
    cross_k: object                         # DeviceTensor [L, B, N_local, S, D]
    cross_v: object
    encoder_hidden_states: object           # DeviceTensor [B, S, H], rows as encoded
    row_map: np.ndarray                     # current row i holds encoded row row_map[i] (after reorders)


def _exclusive(method):
    """Run a public method holding the model's lock: concurrent callers are served one whole call at a time. A call
    that fails (or is interrupted) after a program consumed the device state leaves no dead buffers behind."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except BaseException:
                self._recover(drop_source=method.__name__ == "sample")
                raise

    return locked


class NLLBForSampling:
    """Thread-safe: every public call that touches the device holds one re-entrant lock, so concurrent callers are
    served one whole call at a time; `exclusive()` holds it across several calls (the HF adapter's generate())."""

    def __init__(self, checkpoint: Checkpoint, model: ModelConfig, compile_config: CompileConfig):
        self.checkpoint, self.config, self.compile_config = checkpoint, model, compile_config
        self.shapes = ProgramShapes(model, compile_config)
        self.generation_defaults = GenerationDefaults.read(checkpoint.path, model)  # generation_config.json
        self.runtime = None
        self._weights: dict[str, object] = {}
        self._programs: dict[ProgramKey, object] = {}
        self._program_observers: list[Callable[[ProgramEvent], None]] = []
        self._source: _Source | None = None
        self._caches: dict[str, object] = {}
        self._position = 0
        self._lock = threading.RLock()

    def exclusive(self) -> threading.RLock:
        """The model's lock, to hold across several calls that belong together (encode, decode steps, reorders):
        `with model.exclusive(): ...`. Every public call takes it too; it is re-entrant."""
        return self._lock

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, batch_size: int = 1, tp_degree: int = 1, n_positions=(64, 128, 256),
                        encoder_buckets=(32, 64, 128, 256), amp: str = "f32", backend: str | None = None,
                        compiled_dir: str | None = None, max_top_k: int = 256) -> "NLLBForSampling":
        """`path`: a local HF checkpoint directory or a hub id. `compiled_dir`: compiled artifacts to load programs
        from and store new ones into (see `save`). `max_top_k`: sampling draws among this many most likely tokens."""
        path = resolve_path(path)
        model = ModelConfig.from_hf(read_config(path))  # an unsupported model fails before any weight is read
        checkpoint = Checkpoint(path)
        compile_config = CompileConfig(batch_size=batch_size, tp_degree=tp_degree, n_positions=tuple(n_positions),
                                       encoder_buckets=tuple(encoder_buckets), amp=amp, backend=backend,
                                       compiled_dir=compiled_dir, max_top_k=max_top_k)
        if compile_config.max_target_length > model.max_position_embeddings:
            log.info("n_positions %s exceed max_position_embeddings %d; positions are generated, so this works",
                     compile_config.n_positions, model.max_position_embeddings)
        missing = [s.name for s in sharding.all_weights(model) if not checkpoint.has(s.name)]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"checkpoint {checkpoint.path} is incomplete: missing {shown}")
        return cls(checkpoint, model, compile_config)

    @property
    def tp_degree(self) -> int:
        return self.compile_config.tp_degree

    @property
    def batch_size(self) -> int:
        return self.compile_config.batch_size

    @_exclusive
    def to_neuron(self) -> "NLLBForSampling":
        """Start the runtime and upload the weights (streamed one tensor at a time, sharded per rank)."""
        backend = select_backend(self.compile_config.backend, self.tp_degree)
        if backend == "neuron":  # tp and device memory checked before any device work: a clear error, not an OOM
            from hlo.runtime.neuron_platform import check_fit
            check_fit(*self.shapes.device_bytes(), self.tp_degree)
        store = self.compile_config.compiled_dir
        self.runtime = hlo.runtime.get_runtime(backend, self.tp_degree, artifacts.programs_dir(store) if store else None)
        if store:
            artifacts.check_manifest(store, artifacts.manifest(self))
            artifacts.write_manifest_if_missing(store, artifacts.manifest(self))
        layout, dtype = self.shapes.layout, self.shapes.dtype.numpy
        for spec in sharding.all_weights(self.config):
            tensor = self.checkpoint.get(spec.name)
            expected = sharding.hf_shape(spec, self.config)
            if tensor.shape != expected:
                raise ValueError(f"checkpoint tensor {spec.name} has shape {list(tensor.shape)}, "
                                 f"config.json implies {list(expected)}")
            parts = [p.astype(dtype, copy=False) for p in sharding.shard(spec, tensor, layout)]
            self._weights[spec.name] = self.runtime.put(PerRank(parts))
            del tensor, parts
        self._weights["positions"] = self.runtime.put(sinusoidal_positions(
            self.shapes.position_rows, self.config.d_model, self.config.pad_token_id))
        self.reset()
        return self

    # ----------------------------------------------------------------------------------------------- programs
    def _program(self, key: ProgramKey, build):
        if key not in self._programs:
            start = time.perf_counter()
            self._programs[key] = self.runtime.compile(build())
            self._notify(key, time.perf_counter() - start)
        return self._programs[key]

    def _notify(self, key: ProgramKey, seconds: float) -> None:
        for callback in self._program_observers:
            callback(ProgramEvent(key, seconds))

    def add_program_observer(self, callback: Callable[[ProgramEvent], None]) -> None:
        """Call `callback(ProgramEvent)` for every program this model fetches for the first time (a compile or a
        load from the runtime's caches), e.g. to time compiles."""
        self._program_observers.append(callback)

    @property
    def compiled_programs(self) -> list[ProgramKey]:
        """The programs this model has fetched so far (compiled or loaded), in the order it fetched them."""
        return list(self._programs)

    @_exclusive
    def forget_programs(self) -> None:
        """Drop this model's handles on its programs: the next calls fetch them again from the runtime's caches."""
        self._programs.clear()

    def program_builders(self) -> dict[ProgramKey, object]:
        """Every program generation can run with this model's shape: key -> builder. One new token per step in
        every target bucket; the two-token prefix (decoder start, then the language code) only at position 0, so
        only in the target bucket that holds 2 positions."""
        c, shapes = self.compile_config, self.shapes
        prefix_bucket = next((t for t in c.n_positions if t >= 2), None)
        builders = {}
        for s in c.encoder_buckets:
            builders[ProgramKey("encoder", s)] = lambda s=s: build_encoder(shapes, s)
            builders[ProgramKey("reorder", s)] = lambda s=s: build_reorder(shapes, s)
            for t in c.n_positions:
                for new in (1, 2) if t == prefix_bucket else (1,):
                    for head in ("greedy", "logits", "sample"):
                        builders[ProgramKey("decoder", s, head, new, t)] = \
                            lambda h=head, n=new, t=t, s=s: build_decoder(shapes, n, t, s, h)
        return builders

    @_exclusive
    def compile_all(self, workers: int | None = None) -> int:
        """Compile every program ahead of time, several at once; returns how many the runtime really compiled."""
        from concurrent.futures import ThreadPoolExecutor

        self._require_runtime()
        before = self.runtime.compile_count
        builders = {k: b for k, b in self.program_builders().items() if k not in self._programs}

        def fetch(item):
            start = time.perf_counter()
            return item[0], self.runtime.compile(item[1]()), time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for key, program, seconds in pool.map(fetch, builders.items()):
                self._programs[key] = program
                self._notify(key, seconds)
        return self.runtime.compile_count - before

    @_exclusive
    def save(self, directory: str) -> None:
        """Store every program of this shape with a manifest in `directory`: those compiled already (in the runtime's
        memory) are written, the others compiled first."""
        self._require_runtime()
        previous = self.runtime.use_store(artifacts.programs_dir(directory))
        try:
            self.compile_all()
            for program in list(self._programs.values()):  # compiled before the store was set: write them too
                self.runtime.compile(program.module)
            programs = {p.module.name: self.runtime.artifact_key(p.module) for p in self._programs.values()}
        finally:
            self.runtime.use_store(previous)
        artifacts.write_manifest(directory, artifacts.manifest(self), programs)

    def run_program(self, key, build, **inputs) -> dict:
        """Run the program `key` (compiled from `build()` on first use, then kept): weights are fed by parameter
        name, the rest from `inputs`. For programs outside this class's own loops (the slot engine)."""
        self._require_runtime()
        return self._run(self._program(key, build), **inputs)

    def _run(self, program, **inputs):
        """Run a program: weights are fed by parameter name, the rest from `inputs`."""
        feed = {name: inputs[name] if name in inputs else self._weights[name] for name in program.module.params.names
                if name != hlo.RANK_PARAM}  # the runtime feeds the rank
        return program.run(feed)

    def _recover(self, drop_source: bool) -> None:
        """After a failed call: where a program consumed (donated) a cache or the cross-attention K/V and its result
        never arrived, forget the target and source state, so the next encode() or sample() starts from fresh
        caches. `drop_source`: forget the encoded batch anyway (a half-finished sample())."""
        state = list(self._caches.values()) + ([self._source.cross_k, self._source.cross_v] if self._source else [])
        lost = any(t.deleted for t in state)
        if lost:
            log.warning("a call failed after the device consumed its caches; they are recreated on the next call")
            self._caches = {}
        if lost or drop_source:
            self._source, self._position = None, 0

    def _require_runtime(self):
        if self.runtime is None:
            raise RuntimeError("call model.to_neuron() first: it starts the runtime and uploads the weights")

    # -------------------------------------------------------------------------------------------- low-level API
    @_exclusive
    def reset(self) -> None:
        """Forget the target side: the next decode_step starts at position 0 (the source stays encoded)."""
        self._require_runtime()
        if not self._caches or any(t.deleted for t in self._caches.values()):
            zeros = np.zeros(self.shapes.cache_shape().dims, self.shapes.dtype.numpy)
            self._caches = {"cache_k": self.runtime.put(zeros), "cache_v": self.runtime.put(zeros)}
        self._position = 0

    @_exclusive
    def encode(self, input_ids, attention_mask=None) -> None:
        """Encode a batch of at most `batch_size` rows; resets the target side."""
        self._require_runtime()
        ids, mask = _as_batch(input_ids, attention_mask, self.config.pad_token_id)
        rows = ids.shape[0]
        if rows > self.batch_size:
            raise ValueError(f"{rows} rows exceed the compiled batch_size {self.batch_size}; use sample(), which "
                             "splits batches, or compile with a larger batch_size")
        length = _used_length(mask)
        source_len = self.compile_config.encoder_bucket(length)
        ids_b = np.full((self.batch_size, source_len), self.config.pad_token_id, np.int32)
        mask_b = np.zeros((self.batch_size, source_len), np.int32)
        ids_b[:rows, :length], mask_b[:rows, :length] = ids[:, :length], mask[:, :length]
        program = self._program(ProgramKey("encoder", source_len), lambda: build_encoder(self.shapes, source_len))
        out = self._run(program, input_ids=ids_b, attention_mask=mask_b)
        self._source = _Source(rows, source_len, mask_b, out["cross_k"], out["cross_v"],
                               out["encoder_hidden_states"], np.arange(rows))
        self.reset()

    @_exclusive
    def encoder_hidden_states(self) -> np.ndarray:
        """The last encoded batch's final encoder states [rows, S_bucket, H] (for checks and debugging)."""
        source = self._require_source()
        return source.encoder_hidden_states.numpy(0)[source.row_map].astype(np.float32)

    def _require_source(self) -> _Source:
        if self._source is None:
            raise RuntimeError("call encode() (or sample()) first")
        return self._source

    @property
    def source_rows(self) -> int:
        """Rows of the encoded batch (after reorders: rows x beams, say)."""
        return self._require_source().rows

    @property
    def source_length(self) -> int:
        """The encoder bucket the encoded batch was padded to."""
        return self._require_source().source_len

    @_exclusive
    def wait(self) -> None:
        """Block until the device has finished the work queued so far (programs run asynchronously): for timings."""
        source = self._source
        tensors = list(self._caches.values()) + (
            [source.cross_k, source.cross_v, source.encoder_hidden_states] if source else [])
        for tensor in tensors:
            # TODO: DeviceTensor.wait() once hlo.runtime has it; jax arrays block here, others are read back
            block = getattr(tensor.array, "block_until_ready", None)
            block() if block else tensor.numpy(0)

    @_exclusive
    def reorder(self, indices) -> None:
        """Make row i of the batch a copy of current row `indices[i]`, on the device: the self-attention cache, the
        cross-attention K/V and the source mask. Beam search reorders beams with it; it also grows a batch of rows
        into rows x beams (indices [0, 0, 1, 1, ...]). At most `batch_size` indices."""
        source = self._require_source()
        index = np.asarray(indices).reshape(-1).astype(np.int64)
        if index.size > self.batch_size:
            raise ValueError(f"{index.size} rows (e.g. rows x num_beams) exceed the compiled batch_size "
                             f"{self.batch_size}; compile with batch_size >= {index.size}")
        if index.size == 0 or index.min() < 0 or index.max() >= source.rows:
            raise ValueError(f"reorder indices must lie in [0, {source.rows}), got {index.tolist()}")
        full = np.arange(self.batch_size, dtype=np.int32)  # rows past the used ones keep themselves
        full[: index.size] = index
        program = self._program(ProgramKey("reorder", source.source_len),
                                lambda: build_reorder(self.shapes, source.source_len))
        out = self._run(program, index=full, cross_k=source.cross_k, cross_v=source.cross_v, **self._caches)
        self._caches = {"cache_k": out["cache_k"], "cache_v": out["cache_v"]}
        source.cross_k, source.cross_v = out["cross_k"], out["cross_v"]
        source.encoder_attention_mask = source.encoder_attention_mask[full]
        source.row_map = source.row_map[index]
        source.rows = index.size

    @property
    def position(self) -> int:
        """Target tokens already in the cache."""
        return self._position

    @_exclusive
    def decode_step(self, token_ids) -> np.ndarray:
        """Feed one new token per row ([rows] or [rows, 1]), or a known prefix ([rows, P]); returns the logits of
        the last fed token of each row, float32 [rows, vocab_size]."""
        out = self._decode(token_ids, "logits")
        logits = out["logits"].numpy(0)[: self.config.vocab_size, : self._source.rows]           # [V, rows]
        return np.array(logits.T, order="C")                                                    # a writable copy

    def _decode(self, token_ids, head: str, **head_inputs):
        source = self._require_source()
        tokens = np.asarray(token_ids)
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if tokens.ndim != 2 or tokens.shape[0] != source.rows:
            raise ValueError(f"token_ids must be [{source.rows}] or [{source.rows}, P] for the encoded batch, "
                             f"got shape {list(np.shape(token_ids))}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token_ids must be integers, got {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {tokens.min()}..{tokens.max()}")
        new = tokens.shape[1]
        end = self._position + new
        bucket = self.compile_config.decoder_bucket(end)
        padded = np.full((self.batch_size, new), self.config.pad_token_id, np.int32)
        padded[: source.rows] = tokens
        key = ProgramKey("decoder", source.source_len, head, new, bucket)
        program = self._program(key, lambda: build_decoder(self.shapes, new, bucket, source.source_len, head))
        out = self._run(program, input_ids=padded, start=np.full(self.batch_size, self._position, np.int32),
                        active=(np.arange(self.batch_size) < source.rows).astype(np.int32),
                        encoder_attention_mask=source.encoder_attention_mask, cross_k=source.cross_k,
                        cross_v=source.cross_v, **head_inputs, **self._caches)
        self._caches = {"cache_k": out["cache_k"], "cache_v": out["cache_v"]}
        self._position = end
        return out

    # ---------------------------------------------------------------------------------------------- sampling
    @_exclusive
    def sample(self, input_ids, attention_mask=None, max_new_tokens: int | None = None, forced_bos_token_id=None,
               decoder_start_token_id: int | None = None, eos_token_id=None, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> np.ndarray:
        """Generation laid out as HF `generate()`: decoder start, then the generated tokens (the forced language
        token first when given), rows that end early padded with pad_token_id. `forced_bos_token_id` is one id or one
        per row (rows with different target languages share a batch). Greedy by default; `do_sample=True` draws each
        token on the device from softmax(logits / temperature) within the `top_k` most likely tokens and the
        `top_p` nucleus, from a generator seeded with `seed`. Draws are among the `max_top_k` (K, a compile-time
        cap, default 256) most likely tokens: `top_k=0` means those K, `top_k > K` is an error. Only token ids come
        back to the host. Batches larger than `batch_size` are split and reassembled; a row stops at any of the EOS
        ids (`eos_token_id`: one or a list), decoding when every row has stopped. Arguments left None come from the
        checkpoint's generation_config.json as HF reads it (`self.generation_defaults`): max_new_tokens from
        max_new_tokens or max_length - 1 (capped at the largest decoder bucket), eos_token_id, forced_bos_token_id,
        decoder_start_token_id and pad_token_id."""
        sampling = Sampling(temperature, top_k, top_p, seed) if do_sample else None
        if sampling is not None:
            sampling.check_top_k(self.compile_config.max_top_k)
        self._require_runtime()
        ids, mask = _as_batch(input_ids, attention_mask, self.config.pad_token_id)
        defaults = self.generation_defaults
        if max_new_tokens is None:
            max_new_tokens = min(defaults.max_new_tokens, self.compile_config.max_target_length)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_new_tokens > self.compile_config.max_target_length:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} exceeds the largest decoder bucket "
                f"{self.compile_config.max_target_length} (n_positions={list(self.compile_config.n_positions)}); "
                "compile with a larger n_positions bucket")
        start = defaults.decoder_start_token_id if decoder_start_token_id is None else int(decoder_start_token_id)
        eos = np.asarray(defaults.eos_token_ids if eos_token_id is None else eos_token_id, np.int64).reshape(-1)
        forced_bos_token_id = defaults.forced_bos_token_id if forced_bos_token_id is None else forced_bos_token_id
        forced = None if forced_bos_token_id is None else _one_per_row(forced_bos_token_id, ids.shape[0])
        rng = None if sampling is None else sampling.generator()      # one generator for the whole call
        chunks = [self._sample_chunk(ids[i: i + self.batch_size], mask[i: i + self.batch_size], max_new_tokens,
                                     None if forced is None else forced[i: i + self.batch_size], start, eos,
                                     sampling, rng)
                  for i in range(0, ids.shape[0], self.batch_size)]
        width = max(c.shape[1] for c in chunks)
        out = np.full((ids.shape[0], width), defaults.pad_token_id, np.int64)
        row = 0
        for c in chunks:
            out[row: row + c.shape[0], : c.shape[1]] = c
            row += c.shape[0]
        return out

    @_exclusive
    def next_tokens(self, token_ids, sampling: Sampling | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
        """Feed tokens as `decode_step` does and return the next token of each row, int64 [rows], chosen on the
        device (greedy, or drawn as `sampling` says, with one uniform number per batch row from `rng`, the caller's
        generator: `rng = sampling.generator()` once per decode; None takes a fresh one, which a seeded `sampling`
        refuses): only token ids come back to the host."""
        if sampling is None:
            out = self._decode(token_ids, "greedy")
        else:
            sampling.check_top_k(self.compile_config.max_top_k)
            if rng is None and sampling.seed is not None:
                raise ValueError("a seeded sampling needs its generator across steps: pass "
                                 "rng=sampling.generator(), made once before the first step")
            uniform = (rng or np.random.default_rng()).random(self.batch_size, dtype=np.float32)
            out = self._decode(token_ids, "sample", **head_inputs([sampling] * self.batch_size, uniform))
        tokens = out["next_token"].numpy(0)[: self._source.rows].astype(np.int64)
        bad = np.nonzero((tokens < 0) | (tokens >= self.config.vocab_size))[0]
        if bad.size:  # the heads return -1 for a row whose logits hold NaN (older heads: a large id)
            raise FloatingPointError(
                f"the model produced NaN logits at step {self._position} (target position {self._position - 1}) "
                f"in rows {bad.tolist()}: the token-choice head returned ids {tokens[bad].tolist()}, outside the "
                f"vocabulary [0, {self.config.vocab_size}). With amp={self.compile_config.amp!r}: "
                + ("f16 overflows: use amp='bf16' or 'f32'" if self.compile_config.amp == "f16" else
                   "check the checkpoint's weights for NaN or inf"))
        return tokens

    def _sample_chunk(self, ids, mask, max_new_tokens, forced, start, eos, sampling, rng) -> np.ndarray:
        self.encode(ids, mask)
        rows, pad = ids.shape[0], self.generation_defaults.pad_token_id
        generated = [] if forced is None else [np.asarray(forced, np.int64)]
        done = np.zeros(rows, bool) if forced is None else np.isin(generated[0], eos)
        feed = np.stack([np.full(rows, start, np.int64)] + generated, axis=1)                     # [rows, 1 or 2]
        while len(generated) < max_new_tokens and not done.all():
            token = self.next_tokens(feed, sampling, rng)
            token = np.where(done, pad, token)
            generated.append(token)
            done |= np.isin(token, eos)
            feed = token[:, None]
        return np.concatenate([np.full((rows, 1), start, np.int64)] + [g[:, None] for g in generated], axis=1)


def sinusoidal_positions(rows: int, dim: int, pad: int) -> np.ndarray:
    """HF's M2M100 sinusoidal table [rows, dim] f32: sin | cos of position * 10000^(-i / (dim/2 - 1)), row `pad`
    zero. Computed as HF does in f32 (the same f32 frequencies and angles), with exp, sin and cos rounded correctly
    from float64, where torch's f32 functions are sometimes 1 ulp off: entries within 4e-6 of HF's table for 256
    positions, 3e-5 for 1,100 (tests/test_weights.py). numpy rather than HF's function keeps torch and
    transformers out of the process (about 330 MB of RSS and seconds of import)."""
    half = dim // 2
    step = np.float32(math.log(10000) / (half - 1))
    freq = np.exp((np.arange(half, dtype=np.float32) * -step).astype(np.float64)).astype(np.float32)   # [dim/2]
    angle = (np.arange(rows, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float64)          # [rows, dim/2]
    table = np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)
    if dim % 2:
        table = np.pad(table, ((0, 0), (0, 1)))
    table[pad] = 0.0
    return table


def _as_batch(input_ids, attention_mask, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = _to_numpy(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] array, got shape {list(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integer token ids, got {ids.dtype}")
    mask = (ids != pad).astype(np.int32) if attention_mask is None else _to_numpy(attention_mask).reshape(ids.shape)
    return ids.astype(np.int32), mask.astype(np.int32)


def _one_per_row(token_ids, rows: int) -> np.ndarray:
    """One forced token id for every row, or one per row, as an int64 array of `rows`."""
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    if ids.size not in (1, rows):
        raise ValueError(f"forced_bos_token_id must be one id or one per row ({rows}), got {ids.size}")
    return np.broadcast_to(ids, (rows,))


def _used_length(mask: np.ndarray) -> int:
    """Length up to the last column that any row attends to (trailing all-padding columns change nothing)."""
    used = np.nonzero(mask.any(axis=0))[0]
    return int(used[-1]) + 1 if used.size else 1


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
