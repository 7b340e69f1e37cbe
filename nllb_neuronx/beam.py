"""One request's beam search on the host, step by step, as HF transformers' `GenerationMixin._beam_search` does it.

The slot engine gives a request's `num_beams` beams one slot each. Every step it hands this class the beams' logits
(float32 [num_beams, vocab]); `advance()` returns which beam each slot continues (the cache reorder) and the token
each slot feeds next. Mirrors HF 5.x for one batch item, in float32: log_softmax, the forced-BOS logits processor,
running scores added, the top 2*num_beams candidates of all beams (descending; equal scores by index, a stable sort),
finished hypotheses scored with the length penalty, the early-stop heuristic, and the max-length and EOS stopping
criteria. `length_penalty=1.0, early_stopping=False`: HF's defaults, which NLLB's generation_config keeps.
"""

from __future__ import annotations

import numpy as np

NEG = np.float32(-1.0e9)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, equal values in index order."""
    return np.argsort(-values, kind="stable")[:k]


class BeamSearch:
    def __init__(self, num_beams: int, max_new_tokens: int, start: int, eos: int, pad: int,
                 forced: int | None, length_penalty: float = 1.0, early_stopping: bool = False):
        self.k, self.eos, self.forced = num_beams, eos, forced
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.max_length = 1 + max_new_tokens                                 # the decoder start is the prompt
        self.cur_len = 1
        self.running = np.full((num_beams, self.max_length), pad, np.int64)
        self.running[:, 0] = start
        self.finished = self.running.copy()
        self.running_scores = np.zeros(num_beams, np.float32)
        self.running_scores[1:] = NEG
        self.finished_scores = np.full(num_beams, NEG, np.float32)
        self.finished_lengths = np.zeros(num_beams, np.int64)                # generated tokens of each hypothesis
        self.is_finished = np.zeros(num_beams, bool)
        self.heuristic_unsatisfied = True
        self.done = False

    def tokens(self) -> np.ndarray:
        """The token each beam feeds next (at position cur_len - 1)."""
        return self.running[:, self.cur_len - 1]

    def advance(self, logits: np.ndarray) -> np.ndarray:
        """One step from the beams' logits [k, V]; returns the beam each beam continues from (reorder indices)."""
        k, cur = self.k, self.cur_len
        x = logits.astype(np.float32)
        shifted = x - x.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))               # log_softmax
        if self.forced is not None and cur == 1:                                               # ForcedBOS
            log_probs = np.full_like(log_probs, -np.inf)
            log_probs[:, self.forced] = 0.0
        vocab = log_probs.shape[1]
        accumulated = (log_probs + self.running_scores[:, None]).reshape(-1)                   # [k*V]
        keep = 2 * k
        top = _top(accumulated, keep)
        top_scores, top_beams, top_ids = accumulated[top], top // vocab, top % vocab
        top_sequences = self.running[top_beams].copy()
        top_sequences[:, cur] = top_ids
        hits = (top_ids == self.eos) | (cur + 1 >= self.max_length)                           # stopping criteria

        # the next running beams: the best k that did not stop
        running_scores = top_scores + hits.astype(np.float32) * NEG
        chosen = _top(running_scores, k)
        self.running, self.running_scores = top_sequences[chosen], running_scores[chosen]
        reorder = top_beams[chosen]

        # finished hypotheses: only the top k candidates count
        just_finished = hits & (np.arange(keep) < k)
        scores = top_scores / np.float32((cur + 1 - 1) ** self.length_penalty)
        if self.is_finished.all() and self.early_stopping is True:
            scores = scores + NEG
        if not self.heuristic_unsatisfied:
            scores = scores + NEG
        scores = scores + (~just_finished).astype(np.float32) * NEG
        merged_scores = np.concatenate([self.finished_scores, scores])
        best = _top(merged_scores, k)
        merged = np.concatenate([self.finished, top_sequences])
        lengths = np.concatenate([self.finished_lengths, np.full(keep, cur, np.int64)])
        flags = np.concatenate([self.is_finished, just_finished])
        self.finished, self.finished_scores = merged[best], merged_scores[best]
        self.finished_lengths, self.is_finished = lengths[best], flags[best]

        self.cur_len = cur = cur + 1
        # early-stop heuristic and the loop condition
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            length = self.max_length - 1
        else:
            length = cur - 1
        best_running = self.running_scores[0] / np.float32(length ** self.length_penalty)
        worst = np.where(self.is_finished, self.finished_scores.min(), NEG)
        self.heuristic_unsatisfied = bool(self.heuristic_unsatisfied and (best_running > worst).any())
        open_beam = not (self.is_finished.all() and self.early_stopping is True)
        self.done = not (self.heuristic_unsatisfied and open_beam and not hits.all())
        return reorder

    def result(self) -> np.ndarray:
        """The best hypothesis as HF returns it for this line: decoder start, generated tokens, no padding."""
        return self.finished[0, : 1 + self.finished_lengths[0]].copy()
