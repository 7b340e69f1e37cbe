"""The XLA CPU runtime: collectives over tp ranks, in-place (aliased) updates, compile caches, input checking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hlo
import hlo.runtime.xla as xla_runtime
from hlo import bf16, f32, s32, u32
from hlo.runtime import PerRank, RuntimeInputError, get_runtime, reserve_cpu_devices
from hlo.runtime.xla import XlaRuntime

TPS = [1, 2, 4, 8]


def per_rank_inputs(tp, shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(-50, 50, size=shape).astype(dtype) for _ in range(tp)]


# ------------------------------------------------------------------------------------------------------ collectives

@pytest.mark.parametrize("tp", TPS)
def test_collectives_match_numpy(runtimes, tp):
    rt = runtimes(tp)
    assert rt.tp_degree == tp and len(rt.devices) == tp

    def fn(p):
        return {"sum": hlo.all_reduce(p.x, "add"), "max": hlo.all_reduce(p.x, "max"),
                "isum": hlo.all_reduce(p.i, "add"), "imin": hlo.all_reduce(p.i, "min"),
                "g0": hlo.all_gather(p.x, 0, tp), "g1": hlo.all_gather(p.x, 1, tp), "rank": hlo.replica_id()}

    program = rt.compile(hlo.build("collectives", hlo.ParamSpec(x=f32[2, 3], i=s32[4]), fn))
    xs = per_rank_inputs(tp, (2, 3))
    ints = per_rank_inputs(tp, (4,), np.int32, seed=1)
    out = program(x=PerRank(xs), i=PerRank(ints))
    stacked = np.stack(xs)
    for r in range(tp):
        np.testing.assert_array_equal(out["sum"].numpy(r), stacked.sum(0))
        np.testing.assert_array_equal(out["max"].numpy(r), stacked.max(0))
        np.testing.assert_array_equal(out["isum"].numpy(r), np.stack(ints).sum(0))
        np.testing.assert_array_equal(out["imin"].numpy(r), np.stack(ints).min(0))
        np.testing.assert_array_equal(out["g0"].numpy(r), np.concatenate(xs, 0))
        np.testing.assert_array_equal(out["g1"].numpy(r), np.concatenate(xs, 1))
    assert out["g0"].numpy(0).shape == (2 * tp, 3) and out["g1"].numpy(0).shape == (2, 3 * tp)
    ranks = out["rank"].per_rank()
    assert [int(r) for r in ranks] == list(range(tp))
    assert all(r.dtype == np.uint32 and r.shape == () for r in ranks)


@pytest.mark.parametrize("tp", [2, 4])
def test_all_reduce_bf16_and_replicated_input(runtimes, tp):
    rt = runtimes(tp)
    program = rt.compile(hlo.build("ar_bf16", hlo.ParamSpec(x=bf16[3], y=f32[2]),
                                   lambda p: {"x": hlo.all_reduce(p.x), "y": hlo.all_reduce(p.y, "max")}))
    xs = [np.array([1, 2, -3], dtype=bf16.numpy) * (r + 1) for r in range(tp)]
    out = program(x=PerRank(xs), y=np.array([1.5, -2.0], np.float32))  # plain numpy: the same on every rank
    want = np.array([1, 2, -3], np.float32) * sum(range(1, tp + 1))
    for r in range(tp):
        np.testing.assert_array_equal(out["x"].numpy(r).astype(np.float32), want)
        np.testing.assert_array_equal(out["y"].numpy(r), np.array([1.5, -2.0], np.float32))


@pytest.mark.parametrize("groups", [[[0, 1], [2, 3]], [[0, 2], [1, 3]], [[3, 2], [1, 0]]])
def test_replica_groups_tp4(runtimes, groups):
    rt = runtimes(4)

    def fn(p):
        return {"sum": hlo.all_reduce(p.x, "add", groups), "max": hlo.all_reduce(p.x, "max", groups),
                "gather": hlo.all_gather(p.x, 0, 2, groups)}

    program = rt.compile(hlo.build("groups", hlo.ParamSpec(x=f32[2]), fn))
    xs = [np.array([r, 10 * r + 1], np.float32) for r in range(4)]
    out = program(x=PerRank(xs))
    for group in groups:
        members = [xs[r] for r in group]
        for r in group:
            np.testing.assert_array_equal(out["sum"].numpy(r), np.sum(members, 0))
            np.testing.assert_array_equal(out["max"].numpy(r), np.max(members, 0))
            # gathered in the order the group lists its replicas
            np.testing.assert_array_equal(out["gather"].numpy(r), np.concatenate(members))


def test_pyhlo_collectives_tp2(runtimes):
    rt = runtimes(2)

    def fn(p):
        return {"r": f32[2, 3].AllReduce(p.x, to_apply="max"), "g": f32[2, 6].AllGather(p.x, dimensions=[1]),
                "id": u32[()].ReplicaId()}

    program = rt.compile(hlo.build("pyhlo_cc", hlo.ParamSpec(x=f32[2, 3]), fn))
    xs = per_rank_inputs(2, (2, 3))
    out = program(x=PerRank(xs))
    np.testing.assert_array_equal(out["r"].numpy(1), np.maximum(xs[0], xs[1]))
    np.testing.assert_array_equal(out["g"].numpy(0), np.concatenate(xs, 1))
    assert int(out["id"].numpy(1)) == 1


def test_replica_id_drives_per_rank_computation(runtimes):
    """A tensor-parallel shard pattern: each rank slices its own part by replica id, then all-gathers."""
    rt = runtimes(4)

    def fn(p):
        start = hlo.convert(hlo.replica_id(), s32) * 2
        shard = hlo.dynamic_slice(p.x, [0, start], [3, 2])
        return {"shard": shard * 10.0, "whole": hlo.all_gather(shard * 10.0, 1, 4)}

    program = rt.compile(hlo.build("shard", hlo.ParamSpec(x=f32[3, 8]), fn))
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    out = program(x=x)
    for r in range(4):
        np.testing.assert_array_equal(out["shard"].numpy(r), x[:, 2 * r:2 * r + 2] * 10)
        np.testing.assert_array_equal(out["whole"].numpy(r), x * 10)


# --------------------------------------------------------------------------------------------------------- aliasing

def cache_module(rows=4, width=3):
    def fn(p):
        updated = hlo.dynamic_update_slice(p.cache, p.row, [hlo.reshape(p.pos, ()), 0])
        return {"total": hlo.reduce_sum(updated, [0, 1]), "cache": updated}

    return hlo.build("cache_step", hlo.ParamSpec(cache=f32[rows, width], row=f32[1, width], pos=s32[1]), fn,
                     aliases={"cache": "cache"})


@pytest.mark.parametrize("tp", [1, 2])
def test_aliased_cache_updated_in_place_over_calls(runtimes, tp):
    rt = runtimes(tp)
    program = rt.compile(cache_module())
    start = [np.full((4, 3), -1.0, np.float32) * (r + 1) for r in range(tp)]
    cache = rt.put(PerRank(start))
    host = [a.copy() for a in start]
    donated = []
    for step in range(5):
        row = np.full((1, 3), step + 1, np.float32)
        pos = step % 4
        out = program(cache=cache, row=row, pos=np.array([pos], np.int32))
        donated.append(cache)
        cache = out["cache"]
        for r in range(tp):
            host[r][pos] = row[0]
            np.testing.assert_array_equal(cache.numpy(r), host[r])
            np.testing.assert_array_equal(out["total"].numpy(r), host[r].sum())
    assert not cache.deleted
    cache.wait()                                  # blocks until computed; the tensor stays usable
    np.testing.assert_array_equal(cache.numpy(0)[1], np.full(3, 2, np.float32))
    for old in donated:
        assert old.deleted
        with pytest.raises(RuntimeError, match="donated"):
            old.wait()
        with pytest.raises(RuntimeError, match="donated"):
            old.numpy()
        with pytest.raises(RuntimeError, match="donated"):
            old.per_rank()
        with pytest.raises(RuntimeError, match="donated"):
            program(cache=old, row=np.zeros((1, 3), np.float32), pos=np.array([0], np.int32))
    # the final state after 5 steps: rows 0..3 written by steps 1..4, row 0 rewritten by step 5
    np.testing.assert_array_equal(cache.numpy(0), np.array([[5] * 3, [2] * 3, [3] * 3, [4] * 3], np.float32))


def test_aliased_parameter_fed_from_host_and_non_aliased_input_survives(rt1):
    program = rt1.compile(cache_module())
    row = rt1.put(np.ones((1, 3), np.float32))
    out = program(cache=np.zeros((4, 3), np.float32), row=row, pos=np.array([2], np.int32))
    np.testing.assert_array_equal(out["cache"].numpy(), np.array([[0] * 3, [0] * 3, [1] * 3, [0] * 3], np.float32))
    assert not row.deleted  # only the aliased parameter's buffer is donated
    out2 = program(cache=out["cache"], row=row, pos=np.array([0], np.int32))
    np.testing.assert_array_equal(out2["cache"].numpy()[[0, 2]], np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(row.numpy(), np.ones((1, 3), np.float32))


@pytest.mark.parametrize("tp", [1, 2])
def test_a_single_aliased_output_is_updated_in_place(runtimes, tp):
    """A program whose one output updates a parameter in place compiles (XLA's importer drops the one-element tuple
    but kept the alias at its index) and donates the parameter's buffer."""
    rt = runtimes(tp)
    spec = hlo.ParamSpec(cache=f32[4, 3], row=f32[1, 3], pos=s32[1])
    program = rt.compile(hlo.build(
        "one_aliased_output", spec,
        lambda p: {"cache": hlo.dynamic_update_slice(p.cache, p.row, [hlo.reshape(p.pos, []), hlo.constant(0, s32)])},
        aliases={"cache": "cache"}))
    cache = rt.put(np.zeros((4, 3), np.float32))
    out = program(cache=cache, row=np.ones((1, 3), np.float32), pos=np.array([2], np.int32))["cache"]
    assert cache.deleted
    for r in range(tp):
        np.testing.assert_array_equal(out.numpy(r), np.array([[0] * 3, [0] * 3, [1] * 3, [0] * 3], np.float32))


# ------------------------------------------------------------------------------------------------------ compile cache

def _fresh_module(tag: float):
    # a module unique to the test, so that no earlier test has cached its executable
    return hlo.build("cached", hlo.ParamSpec(x=f32[3]), lambda p: {"y": p.x * tag + 1.0})


def test_compile_cache_in_process(monkeypatch):
    xla_runtime.clear_compile_cache()
    rt = XlaRuntime("xla-cpu", 1)
    assert rt.compile_count == 0
    module = _fresh_module(3.0)
    p1 = rt.compile(module)
    assert rt.compile_count == 1
    p2 = rt.compile(module)
    assert rt.compile_count == 1
    p3 = rt.compile(_fresh_module(3.0))  # an equal module built again: same hash
    assert rt.compile_count == 1
    assert p1.executable is p2.executable is p3.executable
    rt.compile(_fresh_module(4.0))
    assert rt.compile_count == 2
    # another tp degree is another executable
    rt2 = XlaRuntime("xla-cpu", 2)
    rt2.compile(module)
    assert rt2.compile_count == 1
    np.testing.assert_array_equal(p3(x=np.arange(3, dtype=np.float32))["y"].numpy(),
                                  np.arange(3, dtype=np.float32) * 3 + 1)


def test_compile_cache_on_disk(monkeypatch, tmp_path):
    xla_runtime.clear_compile_cache()
    first = get_runtime("xla-cpu", tp_degree=2, cache_dir=tmp_path)
    module = _fresh_module(5.0)
    first.compile(module)
    assert first.compile_count == 1
    files = list(tmp_path.glob("*.pjrt"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))

    xla_runtime.clear_compile_cache()  # a new process, as far as the cache can tell
    second = XlaRuntime("xla-cpu", 2, cache_dir=tmp_path)
    program = second.compile(module)
    assert second.compile_count == 0  # loaded from disk
    xs = [np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)]
    out = program(x=PerRank(xs))
    for r in range(2):
        np.testing.assert_array_equal(out["y"].numpy(r), xs[r] * 5 + 1)


def test_compile_cache_on_disk_ignores_a_corrupt_file(monkeypatch, tmp_path):
    xla_runtime.clear_compile_cache()
    rt = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path)
    module = _fresh_module(6.0)
    (tmp_path / f"{rt.artifact_key(module)}.pjrt").write_bytes(b"not an executable")
    program = rt.compile(module)
    assert rt.compile_count == 1
    np.testing.assert_array_equal(program(x=np.ones(3, np.float32))["y"].numpy(), np.full(3, 7.0, np.float32))


def test_compile_cache_on_disk_repairs_a_corrupt_file(monkeypatch, tmp_path):
    xla_runtime.clear_compile_cache()
    rt = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path)
    module = _fresh_module(7.0)
    (tmp_path / f"{rt.artifact_key(module)}.pjrt").write_bytes(b"not an executable")
    rt.compile(module)
    assert rt.compile_count == 1
    xla_runtime.clear_compile_cache()
    again = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path)
    program = again.compile(module)
    assert again.compile_count == 0  # the recompiled executable replaced the unreadable file
    np.testing.assert_array_equal(program(x=np.ones(3, np.float32))["y"].numpy(), np.full(3, 8.0, np.float32))


def test_compile_cache_on_disk_written_on_in_memory_hit(monkeypatch, tmp_path):
    """A runtime with a cache_dir persists a program even when this process compiled it before, without a cache_dir."""
    xla_runtime.clear_compile_cache()
    module = _fresh_module(8.0)
    XlaRuntime("xla-cpu", 1).compile(module)
    XlaRuntime("xla-cpu", 1, cache_dir=tmp_path).compile(module)
    xla_runtime.clear_compile_cache()
    fresh = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path)
    program = fresh.compile(module)
    assert fresh.compile_count == 0
    np.testing.assert_array_equal(program(x=np.ones(3, np.float32))["y"].numpy(), np.full(3, 9.0, np.float32))


def _slot_copy_module() -> hlo.Module:
    """Copies row `row` of `staged` into row `slot` of `state` in place: a dynamic-slice and an aliased
    dynamic-update-slice, the kind of program whose kernels PJRT CPU loses when it re-serializes a loaded one."""
    spec = hlo.ParamSpec(row=s32[1], slot=s32[1], staged=f32[4, 2, 16, 8], state=f32[4, 2, 16, 8])

    def copy(p):
        row, slot, zero = hlo.reshape(p.row, []), hlo.reshape(p.slot, []), hlo.constant(0, s32)
        update = hlo.dynamic_slice(p.staged, [row, zero, zero, zero], [1, 2, 16, 8])         # [1, 2, 16, 8]
        return {"state": hlo.dynamic_update_slice(p.state, update, [slot, zero, zero, zero]), "row": p.row}

    return hlo.build("store_copy_test", spec, copy, aliases={"state": "state"})


def test_a_program_loaded_from_one_store_runs_from_another(tmp_path):
    """A process that loads its programs from one store and saves them into another (a server handing its store to
    Ray replicas) writes the bytes it loaded: the program runs when loaded from the second store in a new process."""
    first, second = tmp_path / "first", tmp_path / "second"
    module = _slot_copy_module()
    xla_runtime.clear_compile_cache()
    XlaRuntime("xla-cpu", 1, cache_dir=first).compile(module)
    xla_runtime.clear_compile_cache()                            # a new process: loads from the first store
    rt = XlaRuntime("xla-cpu", 1, cache_dir=first)
    rt.compile(module)
    rt.use_store(second)
    rt.compile(module)                                           # in memory: saved into the second store
    assert rt.compile_count == 0
    key = rt.artifact_key(module)
    assert (second / f"{key}.pjrt").read_bytes() == (first / f"{key}.pjrt").read_bytes()

    xla_runtime.clear_compile_cache()                            # a new process: loads from the second store
    fresh = XlaRuntime("xla-cpu", 1, cache_dir=second)
    program = fresh.compile(module)
    assert fresh.compile_count == 0
    staged = np.arange(4 * 2 * 16 * 8, dtype=np.float32).reshape(4, 2, 16, 8)
    out = program(row=np.array([2], np.int32), slot=np.array([1], np.int32), staged=staged,
                  state=np.zeros_like(staged))["state"].numpy()
    np.testing.assert_array_equal(out[1], staged[2])
    np.testing.assert_array_equal(out[[0, 2, 3]], 0)

    # the file it was loaded from gone by the time it is saved again: its HLO is stored, compiled when loaded
    (second / f"{key}.pjrt").unlink()
    fresh.use_store(tmp_path / "third")
    fresh.compile(module)
    assert (tmp_path / "third" / f"{key}.hlo.pb").exists() and not (tmp_path / "third" / f"{key}.pjrt").exists()
    xla_runtime.clear_compile_cache()
    last = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path / "third")
    out = last.compile(module)(row=np.array([0], np.int32), slot=np.array([3], np.int32), staged=staged,
                               state=np.zeros_like(staged))["state"].numpy()
    assert last.compile_count == 1                                 # compiled from the stored HLO
    np.testing.assert_array_equal(out[3], staged[0])


def test_artifact_key_depends_on_module_and_tp(runtimes):
    a, b = _fresh_module(1.0), _fresh_module(2.0)
    rt1, rt2 = runtimes(1), runtimes(2)
    assert rt1.artifact_key(a) == rt1.artifact_key(_fresh_module(1.0))
    assert rt1.artifact_key(a) != rt1.artifact_key(b)
    assert rt1.artifact_key(a) != rt2.artifact_key(a)


def test_artifact_key_carries_the_cpu_features(tmp_path):
    """A store copied to a CPU without the features its executables were compiled for is not loaded (SIGILL)."""
    module = _fresh_module(1.5).serialize()
    avx512 = xla_runtime.executable_key(module, "cpu", 1, "0.10.2", "cpu", ("sse4_2", "avx2", "avx512f"))
    avx2 = xla_runtime.executable_key(module, "cpu", 1, "0.10.2", "cpu", ("sse4_2", "avx2"))
    assert avx512 != avx2
    assert avx2 == xla_runtime.executable_key(module, "cpu", 1, "0.10.2", "cpu", ("avx2", "sse4_2"))  # a set
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: sse4_2 avx2 fpu\n\nprocessor\t: 1\nflags\t\t: sse4_2 avx2 fpu\n")
    assert xla_runtime.host_cpu_features(cpuinfo) == ("avx2", "fpu", "sse4_2")
    rt = XlaRuntime("xla-cpu", 1)
    here = xla_runtime.executable_key(module, "cpu", 1, rt.versions()["jaxlib"], str(rt.devices[0].device_kind),
                                      xla_runtime.host_cpu_features())
    assert rt.artifact_key(_fresh_module(1.5)) == here


def test_artifact_key_carries_the_xla_flags(monkeypatch):
    """An executable compiled under other XLA_FLAGS (another ISA, another dot library) is another store entry; the
    virtual device count, which does not change a program, is left out."""
    module = _fresh_module(1.75)
    assert xla_runtime.compile_flags("--xla_cpu_max_isa=AVX2  --xla_force_host_platform_device_count=8") == (
        "--xla_cpu_max_isa=AVX2",)

    def key(flags):
        return xla_runtime.executable_key(module.serialize(), "cpu", 1, "0.10.2", "cpu", ("avx2",),
                                          xla_runtime.compile_flags(flags))
    assert key("") == key("--xla_force_host_platform_device_count=8")
    assert key("") != key("--xla_cpu_max_isa=AVX2")
    assert key("--xla_cpu_max_isa=AVX2 --xla_cpu_use_xnnpack=false") == key(
        "--xla_cpu_use_xnnpack=false --xla_cpu_max_isa=AVX2")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    plain = XlaRuntime("xla-cpu", 1).artifact_key(module)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false")   # a runtime keys programs by the flags it sees
    assert xla_runtime.compile_flags() == ("--xla_cpu_use_xnnpack=false",)
    assert XlaRuntime("xla-cpu", 1).artifact_key(module) != plain


def test_a_program_stored_as_hlo_is_compiled_on_load(tmp_path, caplog):
    """What a store holds for a program the backend cannot serialize (PJRT CPU has refused the sampling head:
    "'LessThan' is not serializable"): its HLO, compiled when loaded, with a log line and a compile event saying so.
    `store_executables=False` takes that route for every program."""
    xla_runtime.clear_compile_cache()
    rt = XlaRuntime("xla-cpu", 1, store_executables=False)
    events = []
    rt.add_compile_observer(events.append)
    module = _fresh_module(12.0)
    rt.compile(module)                                           # compiled before any store is set
    assert not rt.is_stored(module)
    rt.use_store(tmp_path)
    rt.compile(module)                                           # an in-memory hit, written to the store now
    assert rt.is_stored(module) and [e.reason for e in events] == ["new"]
    key = rt.artifact_key(module)
    assert (tmp_path / f"{key}.hlo.pb").read_bytes() == module.serialize()
    assert not (tmp_path / f"{key}.pjrt").exists()

    xla_runtime.clear_compile_cache()                            # a new process
    fresh = XlaRuntime("xla-cpu", 1, cache_dir=tmp_path)
    fresh.add_compile_observer(events.append)
    with caplog.at_level("INFO", logger="hlo.runtime.xla"):
        program = fresh.compile(module)
    assert [e.reason for e in events] == ["new", "stored as HLO"] and fresh.compile_count == 1
    assert f"program {module.name} is stored as HLO" in caplog.text
    assert not (tmp_path / f"{key}.pjrt").exists()               # the store is not rewritten on load
    np.testing.assert_array_equal(program(x=np.ones(3, np.float32))["y"].numpy(), np.full(3, 13.0, np.float32))


def test_clear_cache_forgets_only_this_runtimes_devices():
    module = _fresh_module(11.0)
    one, two = XlaRuntime("xla-cpu", 1), XlaRuntime("xla-cpu", 2)
    one.compile(module), two.compile(module)
    one.clear_cache()
    one.compile(module), two.compile(module)
    assert one.compile_count == 2 and two.compile_count == 1


def test_compile_error_is_runtime_error(runtimes):
    # builds (the group size is not checked against tp) but XLA's verifier rejects 3 of 4 replicas
    module = hlo.build("bad_gather", hlo.ParamSpec(x=f32[2]), lambda p: {"g": hlo.all_gather(p.x, 0, 3)})
    with pytest.raises(RuntimeError, match="XLA could not compile program 'bad_gather'"):
        runtimes(4).compile(module)


# ------------------------------------------------------------------------------------------------------ input errors

@pytest.fixture(scope="module")
def simple(rt1):
    module = hlo.build("simple", hlo.ParamSpec(x=f32[2, 3], i=s32[3]),
                       lambda p: {"y": p.x * 2.0, "j": p.i + 1})
    return rt1.compile(module)


@pytest.fixture(scope="module")
def simple_tp2(runtimes):
    module = hlo.build("simple", hlo.ParamSpec(x=f32[2, 3], i=s32[3]),
                       lambda p: {"y": p.x * 2.0, "j": p.i + 1})
    return runtimes(2).compile(module)


X = np.ones((2, 3), np.float32)
I = np.arange(3, dtype=np.int32)


def test_good_inputs_and_safe_conversions(simple):
    out = simple(x=X, i=I)
    np.testing.assert_array_equal(out["y"].numpy(), X * 2)
    np.testing.assert_array_equal(out["j"].numpy(), I + 1)
    out = simple(x=np.ones((2, 3), np.int32), i=np.arange(3, dtype=np.int64))  # int into f32, int64 into s32
    np.testing.assert_array_equal(out["y"].numpy(), X * 2)
    np.testing.assert_array_equal(out["j"].numpy(), I + 1)
    out = simple(x=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], i=[7, 8, 9])  # nested lists
    np.testing.assert_array_equal(out["j"].numpy(), np.array([8, 9, 10], np.int32))
    assert out["y"].numpy().dtype == np.float32


def test_missing_input(simple):
    with pytest.raises(RuntimeInputError) as e:
        simple(x=X)
    assert "'simple'" in str(e.value) and "missing inputs ['i']" in str(e.value) and "['x', 'i']" in str(e.value)


def test_extra_input(simple):
    with pytest.raises(RuntimeInputError) as e:
        simple(x=X, i=I, z=I)
    assert "unknown inputs ['z']" in str(e.value) and "['x', 'i']" in str(e.value)


def test_wrong_shape(simple):
    with pytest.raises(RuntimeInputError) as e:
        simple(x=np.ones((3, 2), np.float32), i=I)
    assert "'x'" in str(e.value) and "[2, 3]" in str(e.value) and "[3, 2]" in str(e.value)
    with pytest.raises(RuntimeInputError, match="'i'"):
        simple(x=X, i=np.arange(4, dtype=np.int32))


def test_wrong_dtype(simple):
    with pytest.raises(RuntimeInputError) as e:
        simple(x=X, i=np.array([0.5, 1.0, 2.0]))
    assert "'i'" in str(e.value) and "s32" in str(e.value) and "float64" in str(e.value)
    with pytest.raises(RuntimeInputError, match="'i'.*s32"):
        simple(x=X, i=np.arange(3, dtype=np.float32))
    with pytest.raises(RuntimeInputError, match="'x'.*f32"):
        simple(x=np.ones((2, 3), np.complex64), i=I)
    with pytest.raises(RuntimeInputError, match="out of range"):
        simple(x=X, i=np.array([0, 1, 2 ** 40], np.int64))


def test_runtime_input_error_is_value_error():
    assert issubclass(RuntimeInputError, ValueError)


def test_wrong_number_of_per_rank_arrays(simple_tp2, simple):
    with pytest.raises(RuntimeInputError) as e:
        simple_tp2(x=PerRank([X, X, X]), i=I)
    assert "'x'" in str(e.value) and "3 per-rank arrays" in str(e.value) and "tp_degree 2" in str(e.value)
    with pytest.raises(RuntimeInputError, match="1 per-rank arrays for tp_degree 2"):
        simple_tp2(x=PerRank([X]), i=I)
    with pytest.raises(RuntimeInputError, match="2 per-rank arrays for tp_degree 1"):
        simple(x=PerRank([X, X]), i=I)


def test_per_rank_arrays_must_agree(simple_tp2):
    with pytest.raises(RuntimeInputError, match="differ in shape or dtype"):
        simple_tp2(x=PerRank([X, np.ones((3, 2), np.float32)]), i=I)
    with pytest.raises(RuntimeInputError, match="'x'.*\\[2, 3\\]"):
        simple_tp2(x=PerRank([np.ones((3, 2), np.float32)] * 2), i=I)
    out = simple_tp2(x=PerRank([X, 3 * X]), i=PerRank([I, 10 * I]))
    np.testing.assert_array_equal(out["y"].numpy(1), 6 * X)
    np.testing.assert_array_equal(out["j"].per_rank()[1], 10 * I + 1)


def test_device_tensor_inputs(simple, simple_tp2, runtimes):
    rt1, rt2 = runtimes(1), runtimes(2)
    x1 = rt1.put(X)
    out = simple(x=x1, i=rt1.put(I))
    np.testing.assert_array_equal(out["y"].numpy(), 2 * X)
    assert not x1.deleted  # not aliased: not donated
    with pytest.raises(RuntimeInputError, match="'x'.*device tensor"):
        simple(x=rt1.put(np.ones((3, 2), np.float32)), i=I)
    with pytest.raises(RuntimeInputError, match="other devices"):
        simple_tp2(x=rt2.put(X), i=rt1.put(I))
    assert rt1.put(x1) is x1
    t = rt2.put(PerRank([X, 2 * X]))
    assert t.shape == f32[2, 3] and "tp=2" in repr(t)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        t.numpy(2)
    with pytest.raises(ValueError, match="rank -1 out of range"):
        t.numpy(-1)
    np.testing.assert_array_equal(t.per_rank()[1], 2 * X)


def test_rank0_host_inputs(runtimes):
    # Python numbers and 0-d arrays for rank-0 parameters (np.ascontiguousarray would make them shape [1])
    for tp in (1, 2):
        rt = runtimes(tp)
        program = rt.compile(hlo.build("scalar_in", hlo.ParamSpec(i=s32[()], v=f32[()]),
                                       lambda p: {"y": hlo.convert(p.i, f32) + p.v}))
        out = program(i=np.int32(3), v=0.5)
        np.testing.assert_array_equal(out["y"].numpy(tp - 1), np.float32(3.5))
        out = program(i=PerRank([np.int32(r) for r in range(tp)]), v=np.array(0.25, np.float32))
        assert [float(a) for a in out["y"].per_rank()] == [r + 0.25 for r in range(tp)]
        assert rt.put(np.float32(2.0)).shape == f32[()]


@pytest.mark.parametrize("dtype", [hlo.s64, hlo.f64])
def test_64bit_host_input(rt1, dtype):
    program = rt1.compile(hlo.build("wide_in", hlo.ParamSpec(x=dtype[3]), lambda p: {"y": p.x + p.x}))
    x = np.array([1, 2, 2 ** 40], dtype.numpy)
    np.testing.assert_array_equal(program(x=x)["y"].numpy(), x + x)


def test_64bit_outputs(rt1):
    program = rt1.compile(hlo.build("wide_out", hlo.ParamSpec(x=s32[3]), lambda p: {
        "y": hlo.convert(p.x, hlo.s64) * hlo.constant(2 ** 33, hlo.s64), "z": hlo.convert(p.x, hlo.f64)}))
    out = program(x=np.array([1, -2, 3], np.int32))
    np.testing.assert_array_equal(out["y"].numpy(), np.array([1, -2, 3], np.int64) * 2 ** 33)
    assert out["z"].numpy().dtype == np.float64


# ---------------------------------------------------------------------------------------------------- runtime setup

def test_tp_beyond_cpu_devices_after_jax_started(runtimes):
    import jax
    runtimes(1)  # jax's CPU backend is running now, with the virtual devices hlo asked for (16)
    n = len(jax.devices("cpu"))
    assert n >= 16
    with pytest.raises(ValueError, match=f"tp_degree={n + 1} needs {n + 1} cpu devices, but jax sees {n}"):
        get_runtime("xla-cpu", tp_degree=n + 1)
    assert len(get_runtime("xla-cpu", tp_degree=16).devices) == 16


def test_a_runtime_asks_for_its_own_tp_and_the_cores_only():
    """In a fresh process a tp-1 runtime starts jax's CPU backend with as many virtual devices as the cores, not more
    (XLA runs one intra-op thread per device beyond the cores); a larger tp later is refused, naming
    `reserve_cpu_devices`, and reserving first makes it fit; reserving once jax runs with fewer devices is refused."""
    cores = len(os.sched_getaffinity(0))
    script = textwrap.dedent(f"""\
        import jax
        from hlo.runtime import get_runtime, reserve_cpu_devices
        if {{reserve}}:
            reserve_cpu_devices({cores + 2})
        get_runtime("xla-cpu", tp_degree=1)
        print(len(jax.devices("cpu")))
        try:
            print(len(get_runtime("xla-cpu", tp_degree={cores + 2}).devices))
        except ValueError as e:
            print(e)
        try:
            reserve_cpu_devices({cores + 4})               # too late: jax runs already
        except ValueError as e:
            print(e)
        """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for reserve in (False, True):
        out = subprocess.run([sys.executable, "-c", script.format(reserve=reserve)], capture_output=True, text=True,
                             env=env, cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        devices, second, late = out.stdout.strip().splitlines()
        assert late.startswith(f"jax's CPU backend already runs with {cores + 2 if reserve else cores} devices, "
                               f"fewer than the {cores + 4} asked for: call reserve_cpu_devices before")
        if reserve:
            assert (devices, second) == (str(cores + 2), str(cores + 2))
        else:
            assert devices == str(cores)
            assert f"needs {cores + 2} cpu devices, but jax sees {cores}" in second
            assert f"hlo.runtime.reserve_cpu_devices({cores + 2})" in second


@pytest.mark.parametrize("count", [0, -1, 2.0, True, "4"])
def test_reserve_cpu_devices_names_a_bad_count(count):
    with pytest.raises(ValueError, match="reserve_cpu_devices needs a positive number of devices"):
        reserve_cpu_devices(count)


def test_xla_gpu_without_gpu():
    import jax
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    with pytest.raises(ValueError, match=f"tp_degree={len(gpus) + 1} needs {len(gpus) + 1} gpu devices"):
        get_runtime("xla-gpu", tp_degree=len(gpus) + 1)


@pytest.mark.parametrize("tp", [0, -1, 2.0])
def test_bad_tp_degree(tp):
    with pytest.raises(ValueError, match="tp_degree must be a positive integer"):
        get_runtime("xla-cpu", tp_degree=tp)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get_runtime("tpu")
    with pytest.raises(ValueError, match="unknown XLA backend"):
        XlaRuntime("tpu")


def test_rank_parameter_is_fed_per_rank(runtimes):
    """hlo.rank(): the builder adds the s32 parameter RANK_PARAM, the runtime gives rank r the number r."""
    rt = runtimes(4)
    spec = hlo.ParamSpec(x=f32[3, 8])

    def fn(p):
        shard = hlo.dynamic_slice(p.x, [0, hlo.rank() * 2], [3, 2])
        return {"shard": shard * 10.0, "whole": hlo.all_gather(shard * 10.0, 1, 4, [[0, 1, 2, 3]])}

    module = hlo.build("shard_by_rank", spec, fn)
    assert module.params.names == ["x", hlo.RANK_PARAM] and module.params[hlo.RANK_PARAM] == s32[()]
    assert spec.names == ["x"]  # the caller's spec is left alone
    program = rt.compile(module)
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    for _ in range(2):  # the rank numbers are uploaded once and reused
        out = program(x=x)
        for r in range(4):
            np.testing.assert_array_equal(out["shard"].numpy(r), x[:, 2 * r:2 * r + 2] * 10)
            np.testing.assert_array_equal(out["whole"].numpy(r), x * 10)
    given = program(x=x, **{hlo.RANK_PARAM: np.int32(1)})  # a caller may feed it
    np.testing.assert_array_equal(given["shard"].numpy(3), x[:, 2:4] * 10)


def test_rank_is_added_once_and_only_when_used(runtimes):
    module = hlo.build("twice", hlo.ParamSpec(x=f32[2]), lambda p: {"a": hlo.rank() + 1, "b": hlo.rank() * 2})
    assert module.params.names == ["x", hlo.RANK_PARAM]
    assert hlo.build("none", hlo.ParamSpec(x=f32[2]), lambda p: {"y": p.x}).params.names == ["x"]
    out = runtimes(2).compile(module)(x=np.zeros(2, np.float32))
    assert [int(out["a"].numpy(r)) for r in range(2)] == [1, 2] and int(out["b"].numpy(1)) == 2
