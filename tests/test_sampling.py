"""On-device sampling: draws follow softmax(logits / temperature) within top-k and top-p; seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from nllb_neuronx import NLLBForSampling
from tests.conftest import source_batch

ROWS = 16


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=ROWS, tp_degree=2, n_positions=[8],
                                            encoder_buckets=[8]).to_neuron()
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6,))
    ids, mask = np.repeat(ids, ROWS, 0), np.repeat(mask, ROWS, 0)
    model.encode(ids, mask)
    logits = model.decode_step(np.array([[2, 5]] * ROWS))[0].astype(np.float64)   # the first free token's logits
    return model, ids, mask, logits


def draws(model, ids, mask, calls=30, **kwargs) -> np.ndarray:
    """The first freely chosen token (after start and the forced token) of ROWS x calls samples."""
    out = [model.sample(ids, mask, max_new_tokens=2, forced_bos_token_id=5, do_sample=True, seed=s, **kwargs)[:, 2]
           for s in range(calls)]
    return np.concatenate(out)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_draws_follow_the_tempered_distribution(setup):
    model, ids, mask, logits = setup
    temperature = 2.0
    probs = softmax(logits / temperature)
    tokens = draws(model, ids, mask, temperature=temperature)
    observed = np.bincount(tokens, minlength=probs.size) / tokens.size
    total_variation = 0.5 * np.abs(observed - probs).sum()
    print(f"{tokens.size} draws, total variation from softmax(logits/{temperature}): {total_variation:.3f}")
    assert total_variation < 0.2


def test_each_draw_is_the_inverse_cdf_of_its_seeded_uniform(setup):
    """The host knows each row's uniform number (the seeded generator's first draw): the token must be where that
    number falls in the CDF of the tempered softmax, most likely first."""
    model, ids, mask, logits = setup
    probs = softmax(logits / 1.3)
    order = np.argsort(-probs, kind="stable")
    cdf = np.cumsum(probs[order])
    tokens = draws(model, ids, mask, calls=10, temperature=1.3).reshape(10, ROWS)
    expected = np.stack([order[np.minimum(np.searchsorted(cdf, np.random.default_rng(s).random(ROWS, np.float32),
                                                                side="right"), probs.size - 1)]
                         for s in range(10)])
    agreement = float((tokens == expected).mean())
    print(f"inverse-CDF agreement: {agreement:.1%}")
    assert agreement >= 0.95  # f32 on the device vs f64 here may differ right at a CDF boundary


def test_top_k_and_top_p_restrict_the_support(setup):
    model, ids, mask, logits = setup
    top3 = set(np.argsort(-logits)[:3].tolist())
    assert set(draws(model, ids, mask, calls=8, top_k=3, temperature=3.0).tolist()) <= top3
    probs = softmax(logits)
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1].tolist())
    assert set(draws(model, ids, mask, calls=8, top_p=0.5).tolist()) <= nucleus


def test_seeds_reproduce_and_top_k_1_is_greedy(setup):
    model, ids, mask, _ = setup
    a = model.sample(ids, mask, max_new_tokens=6, do_sample=True, seed=7, temperature=1.5)
    assert np.array_equal(a, model.sample(ids, mask, max_new_tokens=6, do_sample=True, seed=7, temperature=1.5))
    assert not np.array_equal(a, model.sample(ids, mask, max_new_tokens=6, do_sample=True, seed=8, temperature=1.5))
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=6, do_sample=True, top_k=1, seed=1),
                                  model.sample(ids, mask, max_new_tokens=6))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be positive"),
    (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be 0"),
    (dict(top_k=257), "top_k=257 exceeds max_top_k=256, the most tokens sampling draws among; load the model with "
                      "max_top_k=257"),
])
def test_bad_sampling_arguments(setup, kwargs, message):
    model, ids, mask, _ = setup
    with pytest.raises(ValueError, match=message):
        model.sample(ids, mask, max_new_tokens=2, do_sample=True, **kwargs)
