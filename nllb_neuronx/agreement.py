"""How closely a model's greedy decisions follow a reference output (e.g. int8 weights against f32), under teacher
forcing: the model reads the reference's own prefix at every step, so one early difference does not turn every
later token of the line into a difference as it does when two free-running outputs are compared position by position.

    agreed, total = decision_agreement(int8_model, sources, references, decoder_start_token_id=2)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def forced_greedy_choices(model, input_ids, attention_mask, decoder_input_ids) -> np.ndarray:
    """The greedy choice of `model` (an NLLBForSampling after to_neuron()) after each prefix of `decoder_input_ids`
    [rows, L] (at most batch_size rows): int64 [rows, L], column t the token it picks having read columns 0..t."""
    decoder_input_ids = np.asarray(decoder_input_ids)
    if decoder_input_ids.ndim != 2 or decoder_input_ids.shape[1] < 1:
        raise ValueError(f"decoder_input_ids must be [rows, L] with L >= 1, got shape {list(decoder_input_ids.shape)}")
    largest = model.compile_config.n_positions[-1]
    if decoder_input_ids.shape[1] > largest:
        raise ValueError(f"{decoder_input_ids.shape[1]} decoder positions exceed the largest decoder bucket {largest}: "
                         "compile with a larger n_positions")
    model.encode(input_ids, attention_mask)
    return np.stack([model.next_tokens(decoder_input_ids[:, t]) for t in range(decoder_input_ids.shape[1])], axis=1)


def decision_agreement(model, sources: Sequence[Sequence[int]], references: Sequence[Sequence[int]],
                       decoder_start_token_id: int, forced_first: bool = True) -> tuple[int, int]:
    """(decisions where `model` chose the reference's next token, decisions compared) over lines `sources` (token
    ids, no padding) whose reference outputs are `references` (the generated ids after the decoder start: the forced
    language token first when `forced_first`, then the tokens, EOS included where the reference stopped). The
    decision for a forced token is not counted. Lines run in batches of similar reference length."""
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    pad, rows = model.config.pad_token_id, model.batch_size
    order = sorted(range(len(sources)), key=lambda i: len(references[i]))
    agreed = total = 0
    for chunk in (order[i:i + rows] for i in range(0, len(order), rows)):
        width = max(len(references[i]) for i in chunk)
        if width == 0:
            continue
        ids = np.full((len(chunk), max(len(sources[i]) for i in chunk)), pad, np.int64)
        fed = np.full((len(chunk), width), pad, np.int64)
        expected = np.full((len(chunk), width), -1, np.int64)              # -1: not a decision to count
        for row, i in enumerate(chunk):
            ids[row, : len(sources[i])] = sources[i]
            ref = list(references[i])
            fed[row, : len(ref)] = [decoder_start_token_id, *ref[:-1]]
            expected[row, : len(ref)] = ref
            if forced_first:
                expected[row, 0] = -1
        chosen = forced_greedy_choices(model, ids, (ids != pad).astype(np.int64), fed)
        counted = expected >= 0
        agreed += int((chosen == expected)[counted].sum())
        total += int(counted.sum())
    return agreed, total
