"""The lockstep generation loop behind `NLLBForSampling.sample()`: batches of `batch_size` rows, each encoded once,
then decoded together one token per step until every row has stopped, laid out as HF `generate()` returns them.
With `decode_unroll` n > 1 (greedy only), each decoder call makes n steps (`DecodeState.greedy_steps`): the same
tokens, fewer calls; a row that stops mid-call steps on to the call's end on the device, and its tokens there are
replaced with pad as in the one-step loop."""

from __future__ import annotations

import numpy as np

from nllb_neuronx.decode_state import DecodeState, as_batch
from nllb_neuronx.generation_defaults import GenerationDefaults
from nllb_neuronx.program_key import Sampling


def sample(state: DecodeState, defaults: GenerationDefaults, input_ids, attention_mask=None,
           max_new_tokens: int | None = None, forced_bos_token_id=None, decoder_start_token_id: int | None = None,
           eos_token_id=None, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = None) -> np.ndarray:
    """`NLLBForSampling.sample()`'s body (its docstring says what the arguments mean); arguments left None come from
    `defaults` (the checkpoint's generation_config.json)."""
    c = state.compile_config
    sampling = Sampling(temperature, top_k, top_p, seed) if do_sample else None
    if sampling is not None:
        sampling.check_top_k(c.max_top_k)
    state.programs.require_runtime()
    ids, mask = as_batch(input_ids, attention_mask, state.config.pad_token_id)
    if max_new_tokens is None:
        max_new_tokens = min(defaults.max_new_tokens, c.max_target_length)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_new_tokens > c.max_target_length:
        raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the largest decoder bucket {c.max_target_length} "
                         f"(n_positions={list(c.n_positions)}); compile with a larger n_positions bucket")
    start = defaults.decoder_start_token_id if decoder_start_token_id is None else int(decoder_start_token_id)
    eos = np.asarray(defaults.eos_token_ids if eos_token_id is None else eos_token_id, np.int64).reshape(-1)
    forced_bos_token_id = defaults.forced_bos_token_id if forced_bos_token_id is None else forced_bos_token_id
    forced = None if forced_bos_token_id is None else one_per_row(forced_bos_token_id, ids.shape[0])
    b = c.batch_size
    rng = None if sampling is None else sampling.generator()      # one generator for the whole call
    chunks = [_sample_batch(state, ids[i: i + b], mask[i: i + b], max_new_tokens,
                            None if forced is None else forced[i: i + b], start, eos, defaults.pad_token_id, sampling,
                            rng)
              for i in range(0, ids.shape[0], b)]
    width = max(chunk.shape[1] for chunk in chunks)
    out = np.full((ids.shape[0], width), defaults.pad_token_id, np.int64)
    row = 0
    for chunk in chunks:
        out[row: row + chunk.shape[0], : chunk.shape[1]] = chunk
        row += chunk.shape[0]
    return out


def _sample_batch(state: DecodeState, ids, mask, max_new_tokens, forced, start, eos, pad, sampling,
                  rng) -> np.ndarray:
    """One batch of at most batch_size rows: [rows, 1 + generated], rows that stopped early padded with `pad`."""
    state.encode(ids, mask)
    rows = ids.shape[0]
    generated = [] if forced is None else [np.asarray(forced, np.int64)]
    done = np.zeros(rows, bool) if forced is None else np.isin(generated[0], eos)
    feed = np.stack([np.full(rows, start, np.int64)] + generated, axis=1)                     # [rows, 1 or 2]
    unroll = state.compile_config.decode_unroll if sampling is None else 1
    while len(generated) < max_new_tokens and not done.all():
        if unroll > 1 and feed.shape[1] == 1 and max_new_tokens - len(generated) >= unroll:
            steps = state.greedy_steps(feed, unroll)                                            # [rows, unroll]
        else:  # the prefix, sampling, or fewer tokens left than an unrolled call makes
            steps = state.next_tokens(feed, sampling, rng)[:, None]                             # [rows, 1]
        for token in steps.T:  # as one step per call: a row past its EOS gets pad (and is fed pad there)
            if done.all():
                break
            token = np.where(done, pad, token)
            generated.append(token)
            done |= np.isin(token, eos)
        feed = generated[-1][:, None]
    return np.concatenate([np.full((rows, 1), start, np.int64)] + [g[:, None] for g in generated], axis=1)


def one_per_row(token_ids, rows: int) -> np.ndarray:
    """One forced token id for every row, or one per row, as an int64 array of `rows`."""
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    if ids.size not in (1, rows):
        raise ValueError(f"forced_bos_token_id must be one id or one per row ({rows}), got {ids.size}")
    return np.broadcast_to(ids, (rows,))
