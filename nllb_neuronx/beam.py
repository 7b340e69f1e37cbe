"""One request's beam search, HF transformers' `GenerationMixin._beam_search` (5.x) for one batch item, split between
the device and the host. The slot engine gives a request's `num_beams` beams one slot each.

What runs where:
- Device (the slot step's `beam` head, `beam_head.py`): log_softmax of each beam's logits (f32), the forced-BOS
  logits processor at the first step, the beam's running score added, and the request's best
  `2 * num_beams` (HF's `beams_to_keep` with one EOS id) continuations of all its beams, best first, equal scores in
  flat-index order (beam * vocab + token), as torch.topk gives them. Only those candidates reach the host: score,
  token and source beam, O(num_beams) numbers per step.
- Host (this class, numpy, O(num_beams) per step, no vocabulary-sized array): HF's bookkeeping on those candidates:
  the stopping criteria (EOS, max length), the next running beams (the best `num_beams` that did not stop), finished
  hypotheses scored with the length penalty (only the top `num_beams` candidates count), the early-stop heuristic,
  and the loop condition. `advance()` returns the beam each slot continues from (the engine's cache reorder) and
  `tokens()` the token each slot feeds next.
- Device again: the slot reorder program copies the chosen beams' self-attention caches (`slot_reorder.py`).

`length_penalty=1.0, early_stopping=False` are HF's defaults, which NLLB's generation_config keeps.
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

    @property
    def keep(self) -> int:
        """The candidates HF keeps per step: max(2, 1 + EOS ids) * num_beams, with one EOS id."""
        return 2 * self.k

    def forced_token(self) -> int:
        """The token HF's forced-BOS processor forces at this step (the first), else -1 (none)."""
        return self.forced if self.forced is not None and self.cur_len == 1 else -1

    def advance(self, scores: np.ndarray, tokens: np.ndarray, beams: np.ndarray) -> np.ndarray:
        """One step from the request's best continuations of all its beams, best first (the device's beam head):
        accumulated scores f32, token ids and source beams, at least `keep` of each. Returns the beam each beam
        continues from (the cache reorder indices)."""
        k, cur, keep = self.k, self.cur_len, self.keep
        if min(len(scores), len(tokens), len(beams)) < keep:
            raise ValueError(f"beam search with {k} beams needs the {keep} best candidates, got {len(scores)}")
        top_scores = np.asarray(scores[:keep], np.float32)
        top_ids, top_beams = np.asarray(tokens[:keep], np.int64), np.asarray(beams[:keep], np.int64)
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
