"""How to draw tokens: one validated, frozen record of the sampling parameters, for `model.sample`/`next_tokens`
and for the slot engine's requests. The seeded generator is not part of it: it lives where the draws happen (one per
`sample()` call, one per engine request), so a request's draws depend only on its own seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """softmax(logits / temperature) within the `top_k` (0: all) most likely tokens and the `top_p` nucleus, drawn
    with uniform numbers from a generator seeded with `seed` (None: a fresh, unseeded one)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float, np.floating, np.integer)) or not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float, np.floating, np.integer)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be 0 (no limit) or positive, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "top_p", float(self.top_p))

    def generator(self) -> np.random.Generator:
        """A new generator of the uniform numbers, seeded with `seed`."""
        return np.random.default_rng(self.seed)

    def check_top_k(self, max_top_k: int) -> None:
        """top_k above the compile-time cap `max_top_k` is an error naming the fix."""
        if self.top_k > max_top_k:
            raise ValueError(f"top_k={self.top_k} exceeds max_top_k={max_top_k}, the most tokens sampling draws "
                             f"among; load the model with max_top_k={self.top_k} or more")


def head_inputs(rows: list[SamplingParams | None], uniform: np.ndarray) -> dict[str, np.ndarray]:
    """The sample head's per-row inputs for `rows` (None: a greedy row, temperature 0) and their uniform numbers."""
    greedy = SamplingParams()
    params = [greedy if r is None else r for r in rows]
    return {"temperature": np.array([0.0 if r is None else r.temperature for r in rows], np.float32),
            "top_k": np.array([p.top_k for p in params], np.int32),
            "top_p": np.array([p.top_p for p in params], np.float32),
            "uniform": np.asarray(uniform, np.float32)}
