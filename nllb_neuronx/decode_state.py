"""The lockstep decode state: one encoded batch, its self-attention caches and the position every row shares, and
the calls that move it on (encode, decode a step, choose the next tokens, reorder rows, reset the target side).

State on the device, updated in place by aliasing (B = batch_size, S = the batch's encoder bucket):

    cache_k.<i>, cache_v.<i>  [B, N_local, T, D]     self-attention of layer i, every row at the same position
    cross_k.<i>, cross_v.<i>  [B, N_local, S, D]     cross-attention K/V of the encoded rows

T is the largest target bucket, or on XLA CPU (where a decoder reads every stored position) the bucket of the
current position: the caches grow a bucket at a time (`resize.py`) and start small again at reset.

A program that takes the caches donates them: if its result never arrives (an error, an interrupt), `recover()`
forgets what was lost, so the next encode() or sample() starts from fresh caches. Not thread-safe: its owner
(`NLLBForSampling`) holds a lock around every call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nllb_neuronx.program_key import DecoderKey, EncoderKey, ReorderKey, ResizeKey, Sampling
from nllb_neuronx.programs import ProgramRegistry
from nllb_neuronx.sampling import head_inputs

log = logging.getLogger(__name__)


@dataclass
class EncodedSource:
    """The encoded batch: rows in use, source bucket, and what the decoder reads."""

    rows: int
    source_len: int
    encoder_attention_mask: np.ndarray      # s32[B, S]
    cross: dict[str, object]                # DeviceTensor [B, N_local, S, D] by name: cross_k.<i>, cross_v.<i>
    encoder_hidden_states: object           # DeviceTensor [B, S, H], rows as encoded
    row_map: np.ndarray                     # current row i holds encoded row row_map[i] (after reorders)


class DecodeState:
    def __init__(self, programs: ProgramRegistry):
        self.programs, self.shapes = programs, programs.shapes
        self.config, self.compile_config = self.shapes.model, self.shapes.compile
        self.source: EncodedSource | None = None
        self.caches: dict[str, object] = {}
        self.position = 0                   # target tokens already in the cache

    @property
    def batch_size(self) -> int:
        return self.compile_config.batch_size

    def require_source(self) -> EncodedSource:
        if self.source is None:
            raise RuntimeError("call encode() (or sample()) first")
        return self.source

    @property
    def cache_length(self) -> int:
        """The target positions the caches are stored at now (0: no caches)."""
        return next(iter(self.caches.values())).shape.dims[2] if self.caches else 0

    def reset(self) -> None:
        """Forget the target side: the next decode starts at position 0 (the source stays encoded)."""
        self.programs.require_runtime()
        smallest = self.programs.build_shapes.stored_target_length(self.compile_config.n_positions[0])
        if self.cache_length != smallest or any(t.deleted for t in self.caches.values()):
            self._fresh_caches(smallest)
        self.position = 0

    def _fresh_caches(self, target_len: int) -> None:
        zeros = np.zeros(self.shapes.cache_shape(target_len).dims, self.shapes.dtype.numpy)
        put = self.programs.runtime.put
        self.caches = {name: put(zeros) for name in self.shapes.cache_names()}

    def _store_caches_at(self, bucket: int) -> None:
        """Caches that hold target bucket `bucket` as `stored_lengths` says (grown with their contents kept)."""
        wanted = self.programs.build_shapes.stored_target_length(bucket)
        have = self.cache_length
        if have == wanted:
            return
        if self.position == 0:
            self._fresh_caches(wanted)
            return
        out = self.programs.run(ResizeKey("target", have, wanted), **self.caches)
        self.caches = {name: out[name] for name in self.caches}

    def encode(self, input_ids, attention_mask=None) -> None:
        """Encode a batch of at most `batch_size` rows at the smallest bucket that holds it; resets the target side."""
        self.programs.require_runtime()
        ids, mask = as_batch(input_ids, attention_mask, self.config.pad_token_id)
        rows = ids.shape[0]
        if rows > self.batch_size:
            raise ValueError(f"{rows} rows exceed the compiled batch_size {self.batch_size}; use sample(), which "
                             "splits batches, or compile with a larger batch_size")
        length = used_length(mask)
        source_len = self.compile_config.encoder_bucket(length)
        ids_b = np.full((self.batch_size, source_len), self.config.pad_token_id, np.int32)
        mask_b = np.zeros((self.batch_size, source_len), np.int32)
        ids_b[:rows, :length], mask_b[:rows, :length] = ids[:, :length], mask[:, :length]
        out = self.programs.run(EncoderKey(source_len), input_ids=ids_b, attention_mask=mask_b)
        cross = {name: out[name] for name in self.shapes.cross_names()}
        self.source = EncodedSource(rows, source_len, mask_b, cross, out["encoder_hidden_states"], np.arange(rows))
        self.reset()

    def encoder_hidden_states(self) -> np.ndarray:
        """The encoded batch's final encoder states [rows, S_bucket, H], in the current row order."""
        source = self.require_source()
        return source.encoder_hidden_states.numpy(0)[source.row_map].astype(np.float32)

    def decode(self, token_ids, head: str, steps: int = 1, **head_inputs) -> dict:
        """Feed one token per row ([rows] or [rows, 1]) or a known prefix ([rows, P]) through the decoder program with
        `head` (`steps` > 1: that many greedy steps unrolled in one call); returns its outputs (the caches are
        kept)."""
        source = self.require_source()
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
        end = self.position + new - 1 + steps
        bucket = self.compile_config.decoder_bucket(end)
        padded = np.full((self.batch_size, new), self.config.pad_token_id, np.int32)
        padded[: source.rows] = tokens
        self._store_caches_at(bucket)
        out = self.programs.run(DecoderKey(source.source_len, head, new, bucket, steps), input_ids=padded,
                                start=np.full(self.batch_size, self.position, np.int32),
                                active=(np.arange(self.batch_size) < source.rows).astype(np.int32),
                                encoder_attention_mask=source.encoder_attention_mask, **source.cross,
                                **head_inputs, **self.caches)
        self.caches = {name: out[name] for name in self.caches}
        self.position = end
        return out

    def decode_step(self, token_ids) -> np.ndarray:
        """The logits of the last fed token of each row, float32 [rows, vocab_size]."""
        out = self.decode(token_ids, "logits")
        logits = out["logits"].numpy(0)[: self.config.vocab_size, : self.source.rows]            # [V, rows]
        return np.array(logits.T, order="C")                                                    # a writable copy

    def next_tokens(self, token_ids, sampling: Sampling | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
        """The next token of each row, int64 [rows], chosen on the device: greedy, or drawn as `sampling` says with
        one uniform number per batch row from `rng`, the caller's generator (`rng = sampling.generator()` once per
        decode; None takes a fresh one, which a seeded `sampling` refuses)."""
        if sampling is None:
            out = self.decode(token_ids, "greedy")
        else:
            sampling.check_top_k(self.compile_config.max_top_k)
            if rng is None and sampling.seed is not None:
                raise ValueError("a seeded sampling needs its generator across steps: pass "
                                 "rng=sampling.generator(), made once before the first step")
            uniform = (rng or np.random.default_rng()).random(self.batch_size, dtype=np.float32)
            out = self.decode(token_ids, "sample", **head_inputs([sampling] * self.batch_size, uniform))
        return self._checked(out["next_token"].numpy(0)[: self.source.rows].astype(np.int64))

    def greedy_steps(self, token_ids, steps: int) -> np.ndarray:
        """`steps` greedy tokens of each row from one call of the unrolled decoder (one token per row in, each
        step's token fed to the next on the device): int64 [rows, steps]. Rows go on past EOS; the caller discards
        what follows it."""
        out = self.decode(token_ids, "greedy", steps=steps)
        return self._checked(out["next_tokens"].numpy(0)[: self.source.rows].astype(np.int64))

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        """`tokens` ([rows] or [rows, steps]), or a clear error where a head returned -1 for NaN logits."""
        bad = np.nonzero(((tokens < 0) | (tokens >= self.config.vocab_size)).reshape(tokens.shape[0], -1).any(1))[0]
        if bad.size:  # the heads return -1 for a row whose logits hold NaN (older heads: a large id)
            amp = self.compile_config.amp
            raise FloatingPointError(
                f"the model produced NaN logits at step {self.position} (target position {self.position - 1}) "
                f"in rows {bad.tolist()}: the token-choice head returned ids {tokens[bad].tolist()}, outside the "
                f"vocabulary [0, {self.config.vocab_size}). With amp={amp!r}: "
                + ("f16 overflows: use amp='bf16' or 'f32'" if amp == "f16" else
                   "check the checkpoint's weights for NaN or inf"))
        return tokens

    def reorder(self, indices) -> None:
        """Row i becomes a copy of current row `indices[i]`: self-attention cache, cross K/V and source mask."""
        source = self.require_source()
        index = np.asarray(indices).reshape(-1).astype(np.int64)
        if index.size > self.batch_size:
            raise ValueError(f"{index.size} rows (e.g. rows x num_beams) exceed the compiled batch_size "
                             f"{self.batch_size}; compile with batch_size >= {index.size}")
        if index.size == 0 or index.min() < 0 or index.max() >= source.rows:
            raise ValueError(f"reorder indices must lie in [0, {source.rows}), got {index.tolist()}")
        full = np.arange(self.batch_size, dtype=np.int32)  # rows past the used ones keep themselves
        full[: index.size] = index
        out = self.programs.run(ReorderKey(source.source_len, self.cache_length), index=full, **source.cross,
                                **self.caches)
        self.caches = {name: out[name] for name in self.caches}
        source.cross = {name: out[name] for name in source.cross}
        source.encoder_attention_mask = source.encoder_attention_mask[full]
        source.row_map = source.row_map[index]
        source.rows = index.size

    def recover(self, drop_source: bool) -> None:
        """After a failed call: where a program consumed (donated) a cache or the cross-attention K/V and its result
        never arrived, forget the target and source state. `drop_source`: forget the encoded batch anyway (a
        half-finished sample())."""
        source = self.source
        state = list(self.caches.values()) + (list(source.cross.values()) if source else [])
        lost = any(t.deleted for t in state)
        if lost:
            log.warning("a call failed after the device consumed its caches; they are recreated on the next call")
            self.caches = {}
        if lost or drop_source:
            self.source, self.position = None, 0

    def device_tensors(self) -> list:
        """Every device buffer of the state (to wait for the work queued on them)."""
        source = self.source
        return list(self.caches.values()) + (
            [*source.cross.values(), source.encoder_hidden_states] if source else [])


def as_batch(input_ids, attention_mask, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids` (numpy, lists or torch) as s32 [batch, length], with its mask (from `pad` where not given)."""
    ids = _to_numpy(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] array, got shape {list(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integer token ids, got {ids.dtype}")
    mask = (ids != pad).astype(np.int32) if attention_mask is None else _to_numpy(attention_mask).reshape(ids.shape)
    return ids.astype(np.int32), mask.astype(np.int32)


def used_length(mask: np.ndarray) -> int:
    """Length up to the last column that any row attends to (trailing all-padding columns change nothing)."""
    used = np.nonzero(mask.any(axis=0))[0]
    return int(used[-1]) + 1 if used.size else 1


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
