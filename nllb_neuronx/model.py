"""NLLBForSampling: the owner that ties a model's parts together, and its public API.

    model = NLLBForSampling.from_pretrained(path, batch_size=4, tp_degree=2)
    model.to_neuron()                                   # upload weights; programs compile on first use, once
    ids = model.sample(input_ids, attention_mask, max_new_tokens=64, forced_bos_token_id=fra_id)

Low level, for custom decode loops: `encode(input_ids, attention_mask)`, then `decode_step(token_ids)` -> logits
for the last new token of each row, repeatedly; `reset()` forgets the target side.

The parts, one job each: `device_weights.py` (the checkpoint's weights on the device), `programs.py` (the program
registry: every program of the shape, fetched once, run with the weights), `decode_state.py` (the lockstep decode
state), `sampling_loop.py` (`sample()`'s loop); the slot engine (`engine.py`) runs on the same registry.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Callable

import numpy as np

import hlo.runtime

from nllb_neuronx import artifacts, sampling_loop
from nllb_neuronx.backend import select_backend
from nllb_neuronx.config import CompileConfig, ModelConfig, QuantizationConfig
from nllb_neuronx.decode_state import DecodeState
from nllb_neuronx.device_weights import DeviceWeights, check_complete, sinusoidal_positions  # noqa: F401 (re-export)
from nllb_neuronx.generation_defaults import GenerationDefaults
from nllb_neuronx.program_key import ProgramEvent, ProgramKey, Sampling
from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.programs import ProgramRegistry
from nllb_neuronx.weights import Checkpoint, read_config, resolve_path

log = logging.getLogger(__name__)


def _exclusive(method):
    """Run a public method holding the model's lock: concurrent callers are served one whole call at a time. A call
    that fails (or is interrupted) after a program consumed the device state leaves no dead buffers behind."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except BaseException:
                self._state.recover(drop_source=method.__name__ == "sample")
                raise

    return locked


class NLLBForSampling:
    """Thread-safe: every public call that touches the device holds one re-entrant lock, so concurrent callers are
    served one whole call at a time; `exclusive()` holds it across several calls (the HF adapter's generate())."""

    def __init__(self, checkpoint: Checkpoint | None, model: ModelConfig, compile_config: CompileConfig):
        """`checkpoint` None: a model of this shape without weights (its programs can be built, listed, exported)."""
        self.checkpoint, self.config, self.compile_config = checkpoint, model, compile_config
        self.shapes = ProgramShapes(model, compile_config)
        self.generation_defaults = GenerationDefaults.read(   # generation_config.json
            checkpoint.path if checkpoint is not None else None, model)
        self.programs = ProgramRegistry(self.shapes)
        self._state = DecodeState(self.programs)
        self._lock = threading.RLock()

    def exclusive(self) -> threading.RLock:
        """The model's lock, to hold across several calls that belong together (encode, decode steps, reorders):
        `with model.exclusive(): ...`. Every public call takes it too; it is re-entrant."""
        return self._lock

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, batch_size: int = 1, tp_degree: int = 1, n_positions=(64, 128, 256),
                        encoder_buckets=(32, 64, 128, 256), amp: str = "f32", backend: str | None = None,
                        compiled_dir: str | None = None, max_top_k: int = 256,
                        decode_unroll: int = 1,
                        quantization: QuantizationConfig | str | None = None) -> "NLLBForSampling":
        """`path`: a local HF checkpoint directory or a hub id. `compiled_dir`: compiled artifacts to load programs
        from and store new ones into (see `save`). `max_top_k`: sampling draws among this many most likely tokens.
        `decode_unroll`: greedy decode steps per decoder call in `sample()` (1, the default: one step per call;
        benchmarks/RESULTS.md says where more pays). `quantization`: int8 weights, `QuantizationConfig(quant_dtype=
        "s8")` or "s8" (None: the amp dtype)."""
        path = resolve_path(path)
        model = ModelConfig.from_hf(read_config(path))  # an unsupported model fails before any weight is read
        checkpoint = Checkpoint(path)
        compile_config = CompileConfig(batch_size=batch_size, tp_degree=tp_degree, n_positions=tuple(n_positions),
                                       encoder_buckets=tuple(encoder_buckets), amp=amp, backend=backend,
                                       compiled_dir=compiled_dir, max_top_k=max_top_k, decode_unroll=decode_unroll,
                                       quantization=quantization)
        if compile_config.max_target_length > model.max_position_embeddings:
            log.info("n_positions %s exceed max_position_embeddings %d; positions are generated, so this works",
                     compile_config.n_positions, model.max_position_embeddings)
        check_complete(checkpoint, model)
        return cls(checkpoint, model, compile_config)

    @property
    def tp_degree(self) -> int:
        return self.compile_config.tp_degree

    @property
    def batch_size(self) -> int:
        return self.compile_config.batch_size

    @property
    def runtime(self):
        """The runtime the programs run on (None before `to_neuron()`)."""
        return self.programs.runtime

    @_exclusive
    def to_neuron(self) -> "NLLBForSampling":
        """Start the runtime and upload the weights (streamed one tensor at a time, sharded per rank)."""
        backend = select_backend(self.compile_config.backend, self.tp_degree)
        if backend == "neuron":  # tp and device memory checked before any device work: a clear error, not an OOM
            from hlo.runtime.neuron_platform import check_fit
            check_fit(*self.shapes.device_bytes(), self.tp_degree)
        store = self.compile_config.compiled_dir
        runtime = hlo.runtime.get_runtime(backend, self.tp_degree, artifacts.programs_dir(store) if store else None)
        self.programs.attach(runtime, {})
        if store:
            artifacts.check_manifest(store, artifacts.manifest(self))
            artifacts.write_manifest_if_missing(store, artifacts.manifest(self))
        self.programs.attach(runtime, DeviceWeights.upload(runtime, self.checkpoint, self.shapes))
        self._state.reset()
        return self

    # ----------------------------------------------------------------------------------------------- programs
    def add_program_observer(self, callback: Callable[[ProgramEvent], None]) -> None:
        """Call `callback(ProgramEvent)` for every program this model fetches for the first time (a compile or a
        load from the runtime's caches), e.g. to time compiles."""
        self.programs.add_observer(callback)

    @property
    def compiled_programs(self) -> list[ProgramKey]:
        """The programs this model has fetched so far (compiled or loaded), in the order it fetched them."""
        return self.programs.compiled

    @_exclusive
    def forget_programs(self) -> None:
        """Drop this model's handles on its programs: the next calls fetch them again from the runtime's caches."""
        self.programs.forget()

    def program_builders(self) -> dict[ProgramKey, Callable[[], hlo.Module]]:
        """Every program generation can run with this model's shape, the slot engine's included (`programs.py`
        says which): key -> builder (`key.build(shapes)`, with the model's shapes for the backend it runs on, once
        `to_neuron()` chose it: on XLA CPU the states are stored at what their rows need, `ProgramShapes.
        stored_lengths`, which adds resize programs)."""
        shapes = self.programs.build_shapes
        return {key: functools.partial(key.build, shapes) for key in self.programs.every_program()}

    @_exclusive
    def compile_all(self, workers: int | None = None, heads=None, long_rows: int | None = None,
                    warm: bool = False) -> int:
        """Compile every program ahead of time, several at once; returns how many the runtime really compiled.
        `heads` (e.g. ("greedy",)): only the decode programs with these heads, for a service that needs no others.
        `long_rows`: those of a `SlotEngine(long_slots=...)` other than the default (`programs.every_program`).
        `warm`: then run each once on zeros, so that no first call of a request or a timed run pays a program's
        one-time start (on XLA CPU about 0.4 s a program at the 600M shape; the programs' states are zeros of their
        own, not the model's)."""
        return self.programs.compile_all(workers, heads, long_rows, warm)

    @_exclusive
    def save(self, directory: str) -> None:
        """Store every program of this shape with a manifest in `directory`: those compiled already (in the runtime's
        memory) are written, the others compiled first."""
        programs = self.programs.store(artifacts.programs_dir(directory))
        artifacts.write_manifest(directory, artifacts.manifest(self), programs)

    def run_program(self, key: ProgramKey, **inputs) -> dict:
        """Run the program `key` (built by `key.build(model.shapes)` and fetched on first use, then kept): weights
        are fed by parameter name, the rest from `inputs`. For programs outside the lockstep calls (the slot
        engine). Takes no lock: the caller owns the state it feeds."""
        return self.programs.run(key, **inputs)

    # -------------------------------------------------------------------------------------------- low-level API
    @_exclusive
    def reset(self) -> None:
        """Forget the target side: the next decode_step starts at position 0 (the source stays encoded)."""
        self._state.reset()

    @_exclusive
    def encode(self, input_ids, attention_mask=None) -> None:
        """Encode a batch of at most `batch_size` rows; resets the target side."""
        self._state.encode(input_ids, attention_mask)

    @_exclusive
    def encoder_hidden_states(self) -> np.ndarray:
        """The last encoded batch's final encoder states [rows, S_bucket, H] (for checks and debugging)."""
        return self._state.encoder_hidden_states()

    @property
    def source_rows(self) -> int:
        """Rows of the encoded batch (after reorders: rows x beams, say)."""
        return self._state.require_source().rows

    @property
    def source_length(self) -> int:
        """The encoder bucket the encoded batch was padded to."""
        return self._state.require_source().source_len

    @property
    def position(self) -> int:
        """Target tokens already in the cache."""
        return self._state.position

    @property
    def cache_length(self) -> int:
        """Target positions the self-attention caches are stored at now: the largest target bucket, or on XLA CPU
        the bucket of the position reached (`ProgramShapes.stored_lengths`)."""
        return self._state.cache_length

    @_exclusive
    def wait(self) -> None:
        """Block until the device has finished the work queued so far (programs run asynchronously): for timings."""
        for tensor in self._state.device_tensors():
            tensor.wait()

    @_exclusive
    def reorder(self, indices) -> None:
        """Make row i of the batch a copy of current row `indices[i]`, on the device: the self-attention cache, the
        cross-attention K/V and the source mask. Beam search reorders beams with it; it also grows a batch of rows
        into rows x beams (indices [0, 0, 1, 1, ...]). At most `batch_size` indices."""
        self._state.reorder(indices)

    @_exclusive
    def decode_step(self, token_ids) -> np.ndarray:
        """Feed one new token per row ([rows] or [rows, 1]), or a known prefix ([rows, P]); returns the logits of
        the last fed token of each row, float32 [rows, vocab_size]."""
        return self._state.decode_step(token_ids)

    @_exclusive
    def next_tokens(self, token_ids, sampling: Sampling | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
        """Feed tokens as `decode_step` does and return the next token of each row, int64 [rows], chosen on the
        device (greedy, or drawn as `sampling` says, with one uniform number per batch row from `rng`, the caller's
        generator: `rng = sampling.generator()` once per decode; None takes a fresh one, which a seeded `sampling`
        refuses): only token ids come back to the host."""
        return self._state.next_tokens(token_ids, sampling, rng)

    @_exclusive
    def greedy_steps(self, token_ids, steps: int) -> np.ndarray:
        """Feed one token per row ([rows] or [rows, 1]) and make `steps` greedy steps in one decoder call (the
        unrolled program: each step's token feeds the next on the device): int64 [rows, steps]. Rows go on past
        EOS; the caller discards what follows it (`sample()` does, with `decode_unroll`)."""
        return self._state.greedy_steps(token_ids, steps)

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
        return sampling_loop.sample(self._state, self.generation_defaults, input_ids, attention_mask, max_new_tokens,
                                    forced_bos_token_id, decoder_start_token_id, eos_token_id, do_sample, temperature,
                                    top_k, top_p, seed)
