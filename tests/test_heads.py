"""The decoder's token heads on their own: vocab-sharded logits in, token ids out, checked against numpy.

Small vocabularies with small sort tiles (16) force the tiled top-k path that NLLB's 256k vocabulary takes with
16,384-element tiles; tp 2 adds the all-gather of candidates and the runtime-fed rank.
"""

from __future__ import annotations

import numpy as np
import pytest

import hlo
from hlo.runtime import PerRank, get_runtime
from hlo.targets import neuron
from hlo.types import f32, s32

from nllb_neuronx import heads

VOCAB, PADDED, ROWS = 101, 104, 64  # vocab padded to a multiple of tp (as sharding.py pads it)


def shards(x: np.ndarray, tp: int):
    return PerRank(np.split(x, tp, axis=0)) if tp > 1 else x


def logits_batch(seed: int = 0) -> np.ndarray:
    """[PADDED, ROWS] f32 logits; the padding rows hold the largest values, which no head may choose."""
    x = np.random.default_rng(seed).normal(0, 2, (PADDED, ROWS)).astype(np.float32)
    x[VOCAB:] = 100.0
    return x


def run_greedy(x: np.ndarray, tp: int) -> np.ndarray:
    spec = hlo.ParamSpec(logits=f32[PADDED // tp, ROWS])
    module = hlo.build(f"greedy_tp{tp}", spec, lambda p: {"t": heads.greedy(p.logits, VOCAB, tp)})
    assert neuron.check(module, tp) == []
    return get_runtime("xla-cpu", tp).compile(module)(logits=shards(x, tp))["t"].numpy(0)


def run_sample(x, tp, temperature, top_k, top_p, uniform, max_top_k, tile) -> np.ndarray:
    spec = hlo.ParamSpec(logits=f32[PADDED // tp, ROWS], temperature=f32[ROWS], top_k=s32[ROWS], top_p=f32[ROWS],
                         uniform=f32[ROWS])
    module = hlo.build(f"sample_tp{tp}_k{max_top_k}_tile{tile}", spec, lambda p: {"t": heads.sample(
        p.logits, VOCAB, tp, p.temperature, p.top_k, p.top_p, p.uniform, max_top_k, tile)})
    assert neuron.check(module, tp) == []
    assert all(v.operands[0].dims[v.attrs["dimensions"][0]] <= tile
               for c in module.computations for v in c.instructions if v.opcode == "sort")
    out = get_runtime("xla-cpu", tp).compile(module)(
        logits=shards(x, tp), temperature=np.broadcast_to(np.float32(temperature), ROWS).copy(),
        top_k=np.broadcast_to(np.int32(top_k), ROWS).copy(), top_p=np.broadcast_to(np.float32(top_p), ROWS).copy(),
        uniform=uniform)
    return out["t"].numpy(0)


def reference_sample(x, temperature, top_k, top_p, uniform, max_top_k):
    """HF's warpers (temperature, top-k, top-p) and an inverse-CDF draw, in float64, over the max_top_k most likely
    tokens. Also returns, per row, how close the draw came to a CDF boundary."""
    tokens, margins = [], []
    rows = x.shape[1]
    temperature, top_k, top_p = (np.broadcast_to(a, rows) for a in (temperature, top_k, top_p))
    for row in range(rows):
        values = x[:VOCAB, row].astype(np.float64)
        ids = np.lexsort((np.arange(VOCAB), -values))[:max_top_k]                  # largest first, ties: smaller id
        v = values[ids] / temperature[row]
        k = top_k[row] if 0 < top_k[row] <= ids.size else ids.size
        v = np.where(v >= v[k - 1], v, -np.inf)
        p = np.exp(v - v.max())
        p /= p.sum()
        keep = (np.cumsum(p) - p < top_p[row]) | (np.arange(p.size) == 0)
        p = np.where(keep, p, 0.0)
        cdf, target = np.cumsum(p), uniform[row] * p.sum()
        position = min(int((cdf <= target).sum()), int((p > 0).sum()) - 1)
        tokens.append(ids[position])
        margins.append(np.abs(cdf - target).min())
    return np.array(tokens), np.array(margins)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_greedy_is_the_first_maximum_of_the_real_vocabulary(tp):
    x = logits_batch()
    x[7, 0] = x[50, 0] = x[90, 0] = 50.0              # a tie across shards: the smallest id wins
    x[:, 1] = np.float32(-np.inf)
    x[3, 1] = 1.0                                     # one finite logit
    x[60, 2] = np.nan                                 # a NaN row: -1
    x[0, 3] = np.nan
    want = np.argmax(x[:VOCAB], axis=0).astype(np.int32)
    want[2] = want[3] = -1
    got = run_greedy(x, tp)
    np.testing.assert_array_equal(got, want)
    assert got[0] == 7 and got[1] == 3


@pytest.mark.parametrize("tp, max_top_k, tile", [(1, 5, 16), (2, 5, 16), (2, 8, 128), (1, 128, 16384)])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.6)])
def test_sample_draws_as_hf_among_the_k_most_likely(tp, max_top_k, tile, temperature, top_k, top_p):
    x = logits_batch(1)
    uniform = np.random.default_rng(2).random(ROWS, dtype=np.float32)
    got = run_sample(x, tp, temperature, top_k, top_p, uniform, max_top_k, tile)
    want, margin = reference_sample(x, temperature, top_k, top_p, uniform.astype(np.float64), max_top_k)
    clear = margin > 1e-5                             # f32 on the device vs f64 here may differ right at a boundary
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], want[clear])
    assert set(got.tolist()) <= set(np.argsort(-x[:VOCAB], axis=0)[:max_top_k].ravel().tolist())


@pytest.mark.parametrize("tp", [1, 2])
def test_sample_settings_per_row_and_temperature_zero_is_greedy(tp):
    """Rows with different temperature, top-k and top-p share one call, each drawn as HF would alone; rows with
    temperature 0 take exactly the greedy head's token (ties and NaN rows included)."""
    x = logits_batch(5)
    x[[7, 50, 90], 0] = 50.0                          # a tie across shards on a greedy row: the smallest id
    x[60, 4] = np.nan                                 # a NaN greedy row: -1, as greedy
    rng = np.random.default_rng(6)
    temperature = rng.choice([0.0, 0.6, 1.0, 1.7], ROWS).astype(np.float32)
    temperature[[0, 4]] = 0.0
    top_k = rng.choice([0, 1, 3, 20], ROWS).astype(np.int32)
    top_p = rng.choice([1.0, 0.5, 0.9], ROWS).astype(np.float32)
    uniform = rng.random(ROWS, dtype=np.float32)
    got = run_sample(x, tp, temperature, top_k, top_p, uniform, max_top_k=8, tile=16)
    greedy = temperature == 0
    np.testing.assert_array_equal(got[greedy], run_greedy(x, tp)[greedy])
    assert got[0] == 7 and got[4] == -1
    sampled = ~greedy
    want, margin = reference_sample(x[:, sampled], temperature[sampled], top_k[sampled], top_p[sampled],
                                    uniform[sampled].astype(np.float64), 8)
    clear = margin > 1e-5
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[sampled][clear], want[clear])


def test_sample_tiles_change_nothing_and_nan_rows_get_minus_one():
    x = logits_batch(3)
    x[[5, 40, 77], 0] = 9.0                           # ties among the candidates: the smaller id first, any tiling
    x[99, 1] = np.nan
    uniform = np.random.default_rng(4).random(ROWS, dtype=np.float32)
    args = (1.3, 0, 0.9, uniform)
    whole = run_sample(x, 1, *args, max_top_k=6, tile=128)      # one sort of the whole vocabulary
    tiled = run_sample(x, 2, *args, max_top_k=6, tile=16)       # tiles of 13 on each rank, then the candidates
    np.testing.assert_array_equal(tiled, whole)
    assert whole[1] == -1 and (whole[np.arange(ROWS) != 1] >= 0).all()


def test_top_candidates_cap_must_leave_tiles_smaller():
    with pytest.raises(ValueError, match="at most half the sort tile 16"):
        hlo.build("bad", hlo.ParamSpec(x=f32[2, 40]), lambda p: dict(zip("vi", heads.top_candidates(
            p.x, hlo.iota(s32[2, 40], 1), 9, 16))))


@pytest.mark.parametrize("n, k, tile", [(100, 7, 16), (100, 7, 128), (300, 8, 16)])
def test_top_candidates_order_ties_by_id(n, k, tile):
    """Many equal values: the k largest, largest first, equal values by the smaller id, whatever the tiling."""
    x = np.random.default_rng(5).integers(0, 6, (3, n)).astype(np.float32)
    x[1, 50:] = -np.inf                                                   # fewer finite values than tiles hold
    module = hlo.build(f"top_{n}_{k}_{tile}", hlo.ParamSpec(x=f32[3, n]), lambda p: dict(zip("vi", heads.top_candidates(
        p.x, hlo.iota(s32[3, n], 1) + 1000, k, tile))))
    assert neuron.check(module) == []
    out = get_runtime("xla-cpu", 1).compile(module)(x=x)
    want = np.stack([np.lexsort((np.arange(n), -row))[:k] for row in x])
    np.testing.assert_array_equal(out["i"].numpy(0), want + 1000)
    np.testing.assert_array_equal(out["v"].numpy(0), np.take_along_axis(x, want, 1))
