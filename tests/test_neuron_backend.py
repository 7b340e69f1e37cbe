"""The Neuron backend, as far as it can be tested without Neuron hardware or the Neuron SDK.

Tested for real: the neuronx-cc command line (a fake `neuronx-cc` on PATH records its arguments and writes a file,
which the NEFF store picks up), the tp / memory / core-placement checks, route choice and backend fallback with their
messages, and `nllb-neuronx info`. Nothing here runs on a NeuronCore: where a test needs something to execute a
"NEFF", `XlaCpuStandIn` replaces torch-neuronx and runs the HLO that the fake compiler packed into it on XLA CPU
devices, which checks the runtime's own bookkeeping (parameter order, aliasing, donation, per-rank data, the store),
not Neuron.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hlo
from hlo import f32
from hlo.proto import HloModuleProto
from hlo.runtime import PerRank, _jaxlib, get_runtime, reserve_cpu_devices
from hlo.runtime import neuron_platform as platform
from hlo.runtime.neuron import CACHE_URL_ENV, NeuronRuntime
from hlo.runtime.neuron_compile import NeffStore, NeuronCompiler, compiler_command
from hlo.runtime.neuron_platform import GiB

reserve_cpu_devices(16)

ROOT = Path(__file__).resolve().parents[1]

FAKE_MAGIC = b"FAKE-NEFF\0"
FAKE_COMPILER = textwrap.dedent(f"""\
    #!{sys.executable}
    # A stand-in for neuronx-cc: records its argv, then writes a "NEFF" holding the HLO it was given.
    import json, os, sys
    args = sys.argv[1:]
    if args == ["--version"]:
        print(os.environ.get("FAKE_NEURONX_CC_VERSION", "NeuronX Compiler version 2.99.0.0+fake"))
        sys.exit(0)
    with open(os.environ["FAKE_NEURONX_CC_LOG"], "a") as log:
        log.write(json.dumps({{"argv": args, "cwd": os.getcwd()}}) + "\\n")
    if os.environ.get("FAKE_NEURONX_CC_FAIL"):
        print("ERROR 70: fake compiler failure", file=sys.stderr)
        sys.exit(70)
    import time
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_NEURONX_CC_SLEEP", "0")))
    with open(args[1], "rb") as src, open(args[args.index("--output") + 1], "wb") as out:
        out.write({FAKE_MAGIC!r} + src.read())
    with open(os.environ["FAKE_NEURONX_CC_LOG"] + ".spans", "a") as log:
        log.write(json.dumps([start, time.time()]) + "\\n")
""")

NEURON_ENV = ("NEURON_RT_VISIBLE_CORES", "NEURON_RT_NUM_CORES", "NEURON_CC_FLAGS", "NEURON_LOGICAL_NC_CONFIG",
              "HLO_NEURON_TARGET", "HLO_NEURON_ROUTE", "HLO_NEURON_OPTLEVEL")


@pytest.fixture(autouse=True)
def clean_neuron_env(monkeypatch, tmp_path):
    """No Neuron settings from the outer environment; no devices and no instance type unless a test makes them."""
    for name in NEURON_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(platform, "DEVICE_GLOB", str(tmp_path / "dev" / "neuron*"))
    monkeypatch.setattr(platform, "INSTANCE_TYPE_FILE", str(tmp_path / "no-such-product-name"))


@pytest.fixture
def fake_cc(tmp_path, monkeypatch):
    """A fake neuronx-cc first on PATH; returns a function giving the argv lists it was called with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "neuronx-cc"
    exe.write_text(FAKE_COMPILER)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "neuronx-cc.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NEURONX_CC_LOG", str(log))
    return lambda: [json.loads(line)["argv"] for line in log.read_text().splitlines()]


@pytest.fixture
def no_cc(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def row_parallel_module():
    """y = all_reduce(x_r @ w_r); the cache accumulates y in place (aliased)."""
    spec = hlo.ParamSpec(x=f32[2, 4], w=f32[4, 3], cache=f32[2, 3])

    def body(p):
        y = hlo.all_reduce(hlo.dot(p.x, p.w))
        return {"y": y, "cache": p.cache + y}

    return hlo.build("row_parallel_cached", spec, body, aliases={"cache": "cache"})


_STAND_IN_EXECUTABLES: dict[tuple, object] = {}


class XlaCpuStandIn:
    """In place of TorchNeuronxDevice: loads the fake compiler's "NEFF" (the HLO) onto XLA CPU devices. Not Neuron."""

    def __init__(self):
        self.loads = 0
        self.uploads = 0
        self.downloads: list[int] = []     # the rank of each download

    def load(self, neff: bytes, tp: int):
        assert neff.startswith(FAKE_MAGIC)
        devices = _jaxlib.devices("cpu")[:tp]
        if (neff, tp) not in _STAND_IN_EXECUTABLES:   # XLA compiles each HLO once per test session, to save time
            _STAND_IN_EXECUTABLES[neff, tp] = _jaxlib.compile_replicated(
                _jaxlib.to_stablehlo(neff[len(FAKE_MAGIC):]), devices, tp)
        executable = _STAND_IN_EXECUTABLES[neff, tp]
        self.loads += 1
        return executable, _jaxlib.Replicas(devices)

    def upload(self, arrays):
        self.uploads += 1
        return [np.array(a) for a in arrays]        # one host array per rank stands for a parallel device tensor

    def download(self, handle, rank: int):
        self.downloads.append(rank)
        return handle[rank].copy()

    def run(self, model, inputs, outputs, input_names, output_names, tp: int):
        assert input_names == [f"input{i}" for i in range(len(inputs))]
        assert output_names == [f"output{i}" for i in range(len(outputs))]
        executable, replicas = model
        avals = [replicas.aval(h[0].shape, h[0].dtype) for h in outputs]
        results = replicas.execute(executable, [replicas.put(h) for h in inputs], avals)
        for handle, result in zip(outputs, results):
            for rank in range(tp):
                handle[rank][...] = replicas.shard(result, rank)   # written into the output buffers, as on device


# ---------------------------------------------------------------------------------------------- compiler command
def test_compiler_command_defaults():
    assert compiler_command("model.hlo.pb", "model.neff", "trn1") == [
        "neuronx-cc", "compile", "model.hlo.pb", "--framework", "XLA", "--target", "trn1",
        "--model-type", "transformer", "--auto-cast", "none", "-O2", "--output", "model.neff"]
    assert compiler_command("m.pb", "m.neff", "inf2", optlevel=1)[-3:] == ["-O1", "--output", "m.neff"]
    assert "trn2" in compiler_command("m.pb", "m.neff", "trn2")


def test_compiler_command_extra_flags_replace_defaults():
    cmd = compiler_command("m.pb", "m.neff", "inf2",
                           flags=["--auto-cast=matmult", "--auto-cast-type", "bf16", "-O1", "--target", "inf2",
                                  "--enable-fast-loading-neuron-binaries"])
    assert cmd == ["neuronx-cc", "compile", "m.pb", "--framework", "XLA", "--target", "inf2",
                   "--model-type", "transformer", "--output", "m.neff",
                   "--auto-cast=matmult", "--auto-cast-type", "bf16", "-O1", "--enable-fast-loading-neuron-binaries"]


@pytest.mark.parametrize("flags, match", [
    (["--output", "x.neff"], "--output.*remove it from NEURON_CC_FLAGS"),
    (["--framework=XLA"], "--framework"),
    (["--target=trn1"], "sets --target trn1, but this runtime compiles for inf2"),
])
def test_compiler_command_rejects_flags_it_owns(flags, match):
    with pytest.raises(ValueError, match=match):
        compiler_command("m.pb", "m.neff", "inf2", flags=flags)


def test_compiler_command_bad_target_and_optlevel():
    with pytest.raises(ValueError, match="unknown Neuron target 'inf1'"):
        compiler_command("m.pb", "m.neff", "inf1")
    with pytest.raises(ValueError, match="optlevel must be one of"):
        compiler_command("m.pb", "m.neff", "trn1", optlevel=4)


# ------------------------------------------------------------------------------------ fake neuronx-cc and store
def test_fake_neuronx_cc_writes_neff_into_store(fake_cc, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_CC_FLAGS", "--auto-cast=matmult --enable-fast-loading-neuron-binaries")
    module = row_parallel_module()
    neff = NeuronCompiler("inf2", 2, cache_dir=tmp_path / "compiled").compile(module)

    (argv,) = fake_cc()
    assert argv[0] == "compile" and argv[1].endswith("model.hlo.pb")
    assert argv[2:] == ["--framework", "XLA", "--target", "inf2", "--model-type", "transformer", "-O2",
                        "--output", argv[argv.index("--output") + 1],
                        "--auto-cast=matmult", "--enable-fast-loading-neuron-binaries"]
    # the store picked up the file neuronx-cc wrote, under the key, with how it was built
    assert neff.path == tmp_path / "compiled" / f"{neff.key}.neff" and neff.path.is_file()
    meta = json.loads((tmp_path / "compiled" / f"{neff.key}.neff.json").read_text())
    assert meta["module"] == "row_parallel_cached" and meta["target"] == "inf2" and meta["tp_degree"] == 2
    # what neuronx-cc read: the same module, with the all-reduce's replica group spelled out for tp=2
    proto = HloModuleProto.FromString(neff.read()[len(FAKE_MAGIC):])
    reduces = [i for c in proto.computations for i in c.instructions if i.opcode == "all-reduce"]
    assert [list(g.replica_ids) for g in reduces[0].replica_groups] == [[0, 1]]
    assert proto.name == "row_parallel_cached"

    # same HLO, target, tp and flags: found in the store, compiler not run again (also from a new compiler)
    again = NeuronCompiler("inf2", 2, cache_dir=tmp_path / "compiled").compile(module)
    assert again.path == neff.path and len(fake_cc()) == 1
    # another target or tp degree or flag set is another NEFF
    assert NeuronCompiler("trn1", 2, cache_dir=tmp_path / "compiled").compile(module).key != neff.key
    monkeypatch.setenv("NEURON_CC_FLAGS", "-O1")
    assert NeuronCompiler("inf2", 2, cache_dir=tmp_path / "compiled").compile(module).key != neff.key
    assert len(fake_cc()) == 3 and "-O1" in fake_cc()[-1]


def test_neuronx_cc_failure_is_a_clear_error(fake_cc, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NEURONX_CC_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"neuronx-cc failed \(exit 70\) compiling 'row_parallel_cached' for trn1 "
                                           r"tp=2: ERROR 70: fake compiler failure(.|\n)*Command: .*--target trn1"):
        NeuronCompiler("trn1", 2, cache_dir=tmp_path).compile(row_parallel_module())
    assert not list(tmp_path.glob("*.neff"))


def test_missing_neuronx_cc(no_cc, tmp_path):
    with pytest.raises(RuntimeError, match=r"neuronx-cc is not on PATH.*pip install 'neuronx-cc==2\.\*'"):
        NeuronCompiler("trn1", 1, cache_dir=tmp_path).compile(row_parallel_module())
    with pytest.raises(RuntimeError, match="neuronx-cc is not on PATH"):
        NeuronRuntime(1, tmp_path, route="aot", target="trn1")


def test_store_ignores_empty_files(tmp_path):
    store = NeffStore(tmp_path)
    (tmp_path / "abc.neff").write_bytes(b"")
    assert store.get("abc") is None
    src = tmp_path / "src.neff"
    src.write_bytes(b"x")
    assert store.put("abc", src, {"k": 1}) == store.get("abc") and store.get("abc").read_bytes() == b"x"


# ------------------------------------------------------------------------------------------------- aot runtime
def test_aot_route_without_torch_neuronx(fake_cc, tmp_path):
    with pytest.raises(RuntimeError,
                       match=r"torch-neuronx, which cannot be imported here.*pip install 'torch-neuronx==2\.9\.\*'"):
        NeuronRuntime(2, tmp_path, route="aot", target="trn1")


def test_aot_route_needs_a_target(fake_cc, tmp_path):
    with pytest.raises(ValueError, match="pass target= or set HLO_NEURON_TARGET"):
        NeuronRuntime(2, tmp_path, route="aot", device=XlaCpuStandIn())


def test_aot_runtime_bookkeeping_with_a_stand_in_device(fake_cc, tmp_path):
    device = XlaCpuStandIn()
    runtime = NeuronRuntime(2, tmp_path, target="inf2", device=device)
    assert runtime.route == "aot" and runtime.backend == "neuron"
    program = runtime.compile(row_parallel_module())
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    weights = runtime.put(PerRank([w[:4], w[4:]]))
    cache = runtime.put(np.zeros((2, 3), np.float32))
    out = program(x=PerRank([x[:, :4], x[:, 4:]]), w=weights, cache=cache)
    np.testing.assert_allclose(out["y"].numpy(rank=1), x @ w, rtol=1e-5)
    assert cache.deleted and not weights.deleted                     # the aliased input was donated
    with pytest.raises(RuntimeError, match="donated"):
        cache.numpy()
    out2 = program(x=PerRank([x[:, :4], x[:, 4:]]), w=weights, cache=out["cache"])
    np.testing.assert_allclose(out2["cache"].numpy(rank=0), 2 * (x @ w), rtol=1e-5)
    assert len(fake_cc()) == 1 and device.loads == 1 and runtime.compile_count == 1

    # a new process would find the NEFF in the store: no compile, one load on its device
    other = XlaCpuStandIn()
    rerun = NeuronRuntime(2, tmp_path, target="inf2", device=other, route="aot")
    rerun.compile(row_parallel_module())
    assert len(fake_cc()) == 1 and other.loads == 1 and rerun.compile_count == 0
    with pytest.raises(hlo.runtime.RuntimeInputError, match="expected shape"):
        program(x=np.zeros((2, 5), np.float32), w=weights, cache=out2["cache"])


def test_aot_output_buffers_are_allocated_once_and_reads_fetch_one_rank(fake_cc, tmp_path):
    device = XlaCpuStandIn()
    runtime = NeuronRuntime(2, tmp_path, target="inf2", device=device, route="aot")
    program = runtime.compile(row_parallel_module())
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    weights, x_dev = runtime.put(PerRank([w[:4], w[4:]])), runtime.put(PerRank([x[:, :4], x[:, 4:]]))
    cache = runtime.put(np.zeros((2, 3), np.float32))
    uploads = device.uploads
    for step in range(1, 6):
        out = program(x=x_dev, w=weights, cache=cache)
        np.testing.assert_allclose(out["y"].numpy(rank=1), x @ w, rtol=1e-5)
        cache = out["cache"]
        del out                                  # the y buffer goes back to the runtime for the next call
    assert device.uploads == uploads + 1         # y's buffer, allocated by the first call only
    np.testing.assert_allclose(cache.numpy(rank=0), 5 * (x @ w), rtol=1e-5)
    assert device.downloads == [1] * 5 + [0]     # each read fetched the rank asked for, only
    kept = program(x=x_dev, w=weights, cache=cache)
    again = program(x=x_dev, w=weights, cache=kept["cache"])    # `kept` is alive: its y buffer is not reused
    np.testing.assert_allclose(kept["y"].numpy(0), again["y"].numpy(0), rtol=1e-5)
    assert device.uploads == uploads + 2


def test_nllb_model_on_the_aot_stand_in_saves_and_reloads_without_compiling(fake_cc, tiny_checkpoint, tmp_path,
                                                                             monkeypatch):
    """NLLBForSampling end to end on the ahead-of-time route: the fake compiler, XLA CPU standing in for the cores.
    Sample (greedy and drawn), save, and reload from the artifacts with zero compiles."""
    from hlo.runtime import neuron
    from nllb_neuronx import NLLBForSampling
    from tests.conftest import hf_generate, source_batch

    monkeypatch.setattr(neuron, "TorchNeuronxDevice", XlaCpuStandIn)   # the stand-in in place of torch-neuronx
    monkeypatch.setenv("HLO_NEURON_TARGET", "inf2")
    monkeypatch.setenv("HLO_NEURON_ROUTE", "aot")
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(9, 5))
    shape = dict(batch_size=2, tp_degree=2, n_positions=[8], encoder_buckets=[16])

    def use(model):
        return (model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=5),
                model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=5, do_sample=True, top_k=3, seed=0))

    model = NLLBForSampling.from_pretrained(path, backend="neuron", **shape).to_neuron()
    assert isinstance(model.runtime, NeuronRuntime) and model.runtime.route == "aot"
    greedy, drawn = use(model)
    np.testing.assert_array_equal(greedy, hf_generate(hf, ids, mask, max_new_tokens=4, forced_bos_token_id=5,
                                                      do_sample=False, num_beams=1))

    store = tmp_path / "artifacts"
    model.save(str(store))
    compiled = len(fake_cc())
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["backend"] == "neuron" and manifest["versions"]["neuronx-cc"] == \
        "NeuronX Compiler version 2.99.0.0+fake"
    assert all((store / "programs" / f"{key}.neff").is_file() for key in manifest["programs"].values())

    model.runtime.clear_cache()                                    # a new process
    again = NLLBForSampling.from_pretrained(path, backend="neuron", compiled_dir=str(store), **shape).to_neuron()
    events = []
    again.runtime.add_compile_observer(events.append)
    greedy_again, drawn_again = use(again)
    assert events == [] and again.runtime.compile_count == 0 and len(fake_cc()) == compiled
    np.testing.assert_array_equal(greedy_again, greedy)
    np.testing.assert_array_equal(drawn_again, drawn)


NO_JAX = textwrap.dedent("""\
    import os, sys

    class _NoJax:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("jax", "jaxlib"):
                return None
            find = getattr(self.inner, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    sys.meta_path[:] = [_NoJax(finder) for finder in sys.meta_path]
""")


def test_aot_route_imports_no_jax_and_the_cache_url_comes_first(fake_cc, tiny_checkpoint, tmp_path):
    """In a Python where jax cannot be imported: the model runs its ahead-of-time route (compile, upload, run) with
    a numpy stand-in device; and the PJRT route sets NEURON_COMPILE_CACHE_URL before it first asks jax for devices."""
    code = NO_JAX + textwrap.dedent(f"""
        import numpy as np
        from hlo.runtime import neuron
        from nllb_neuronx import NLLBForSampling

        class NumpyDevice:   # keeps buffers as numpy arrays; runs nothing (this checks imports, not results)
            def load(self, neff, tp):
                return neff
            def upload(self, arrays):
                return [np.array(a) for a in arrays]
            def download(self, handle, rank):
                return handle[rank]
            def run(self, model, inputs, outputs, input_names, output_names, tp):
                pass

        neuron.TorchNeuronxDevice = NumpyDevice
        model = NLLBForSampling.from_pretrained({tiny_checkpoint[0]!r}, backend="neuron", tp_degree=2,
                                                n_positions=[8], encoder_buckets=[16],
                                                compiled_dir={str(tmp_path / "a")!r})
        model.to_neuron()
        model.encode(np.array([[5, 6, 2]]))
        assert model.runtime.route == "aot" and model.runtime.compile_count == 1
        assert not [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib")]
        try:
            neuron.NeuronRuntime(1, {str(tmp_path / "p")!r}, route="pjrt")
        except ImportError:
            pass
        print(os.environ["NEURON_COMPILE_CACHE_URL"])
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HLO_NEURON_TARGET="inf2", HLO_NEURON_ROUTE="aot")
    env.pop("NEURON_COMPILE_CACHE_URL", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(tmp_path / "p" / "neuron-compile-cache")


def test_compile_workers_are_bounded_by_memory(fake_cc, tmp_path, monkeypatch):
    from hlo.runtime.neuron_compile import compile_workers
    assert compile_workers(cpus=16, available=20 * GiB, per_compile=8 * GiB) == 2
    assert compile_workers(cpus=2, available=200 * GiB, per_compile=8 * GiB) == 2
    assert compile_workers(cpus=16, available=GiB, per_compile=8 * GiB) == 1
    assert compile_workers(cpus=16, available=64 * GiB, env={"HLO_NEURON_COMPILE_MEMORY_GIB": "16"}) == 4
    with pytest.raises(ValueError, match="HLO_NEURON_COMPILE_MEMORY_GIB='x'"):
        compile_workers(env={"HLO_NEURON_COMPILE_MEMORY_GIB": "x"})

    # one compile's worth of memory: threads compiling four modules run neuronx-cc one at a time
    monkeypatch.setenv("HLO_NEURON_COMPILE_MEMORY_GIB", "1000000")
    monkeypatch.setenv("FAKE_NEURONX_CC_SLEEP", "0.3")
    from concurrent.futures import ThreadPoolExecutor
    compiler = NeuronCompiler("inf2", 2, cache_dir=tmp_path / "c")
    modules = [hlo.build(f"m{i}", hlo.ParamSpec(x=f32[2]), lambda p, i=i: {"y": p.x + float(i)}) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(compiler.compile, modules))
    spans = sorted(json.loads(line) for line in (tmp_path / "neuronx-cc.log.spans").read_text().splitlines())
    assert len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))   # no two overlap


def test_neff_key_carries_the_version_the_binary_reports(fake_cc, tmp_path, monkeypatch):
    """neuronx-cc installed without pip metadata (a DLAMI's, say): the version comes from `neuronx-cc --version`."""
    from hlo.runtime.neuron_compile import compiler_version
    module = row_parallel_module()
    first = NeuronCompiler("inf2", 2, cache_dir=tmp_path / "c")
    assert first.version() == "NeuronX Compiler version 2.99.0.0+fake"
    key = first.module_key(module)
    exe = tmp_path / "bin" / "neuronx-cc"
    exe.write_text(exe.read_text().replace("2.99.0.0+fake", "2.100.1.0+fake"))   # another compiler release
    os.utime(exe, ns=(exe.stat().st_atime_ns, exe.stat().st_mtime_ns + 10**9))
    assert compiler_version(str(exe)) == "NeuronX Compiler version 2.100.1.0+fake"
    assert NeuronCompiler("inf2", 2, cache_dir=tmp_path / "c").module_key(module) != key


# ------------------------------------------------------------------------------------------------ pjrt route
def test_pjrt_route_reuses_the_xla_runtime(monkeypatch, tmp_path):
    """Wiring only: CPU devices stand in for the 'neuron' devices jax would see with the plugin (a stand-in package
    named libneuronxla says the plugin is installed)."""
    real = _jaxlib.devices
    monkeypatch.setattr(_jaxlib, "devices", lambda p: real("cpu") if p == "neuron" else real(p))
    fake_pkg = tmp_path / "site"
    (fake_pkg / "libneuronxla").mkdir(parents=True)
    (fake_pkg / "libneuronxla" / "__init__.py").write_text("raise ImportError('a stand-in, never imported')\n")
    monkeypatch.syspath_prepend(str(fake_pkg))
    monkeypatch.setenv(CACHE_URL_ENV, "")
    runtime = get_runtime("neuron", 2, tmp_path / "store")
    from hlo.runtime.xla import XlaRuntime
    assert isinstance(runtime, NeuronRuntime) and runtime.route == "pjrt"
    assert isinstance(runtime._impl, XlaRuntime) and runtime._impl.platform == "neuron"
    assert os.environ[CACHE_URL_ENV] == str(tmp_path / "store" / "neuron-compile-cache")
    spec = hlo.ParamSpec(x=f32[2, 4])
    module = hlo.build("sum_ranks", spec, lambda p: {"y": hlo.all_reduce(p.x)})
    program = runtime.compile(module)
    out = program(x=PerRank([np.ones((2, 4), np.float32), 2 * np.ones((2, 4), np.float32)]))
    np.testing.assert_array_equal(out["y"].numpy(rank=1), np.full((2, 4), 3, np.float32))
    # the store keeps the program's HLO (the plugin's serialized executables are not relied on)
    assert (tmp_path / "store" / f"{runtime.artifact_key(module)}.hlo.pb").read_bytes() == module.serialize()


def test_pjrt_route_without_plugin():
    with pytest.raises(RuntimeError, match=r"jax sees no 'neuron' devices.*jax-neuronx"):
        NeuronRuntime(1, route="pjrt")


def test_no_route_usable_here():
    with pytest.raises(RuntimeError, match=r"no Neuron route is usable.*PJRT: no Neuron devices.*Ahead-of-time: no "
                                           r"Neuron devices.*backend='xla-cpu'"):
        get_runtime("neuron", 1)
    with pytest.raises(ValueError, match="unknown Neuron route 'xla'"):
        NeuronRuntime(1, route="xla")


# ---------------------------------------------------------------------------------------- tp and memory checks
@pytest.mark.parametrize("target, ok, bad, hint", [
    ("trn1", [1, 2, 8, 16, 32], 4, "use tp_degree=8"),
    ("inf2", [1, 2, 4, 8, 24], 16, "use tp_degree=24"),
    ("inf2", [1], 32, "use at most tp_degree=24"),
    ("trn2", [1, 4, 64], 3, "use tp_degree=4"),
])
def test_tp_degree_per_target(target, ok, bad, hint):
    for tp in ok:
        platform.check_tp_degree(tp, target)
    with pytest.raises(ValueError, match=rf"tp_degree={bad} is not supported on {target}: supported degrees are "
                                         rf".*; {hint}"):
        platform.check_tp_degree(bad, target)


def test_memory_check():
    # nllb-200-distilled-600M in f32 (about 2.5 GB) with small caches fits one NeuronCore-v2
    assert platform.check_memory(int(2.5 * GiB), GiB // 2, 1, "inf2") == 3 * GiB
    assert platform.check_memory(20 * GiB, 4 * GiB, 2, "trn1") == 12 * GiB
    with pytest.raises(ValueError, match=r"weights \(20\.00 GiB\) \+ caches \(4\.00 GiB\) = 24\.00 GiB do not fit in "
                                         r"1 x 16\.00 GiB of trn1 NeuronCore-v2 memory \(16\.00 GiB\): use "
                                         r"tp_degree=2 .*16-bit"):
        platform.check_memory(20 * GiB, 4 * GiB, 1, "trn1")
    with pytest.raises(ValueError, match="do not fit"):   # the bound is strict
        platform.check_memory(16 * GiB, 0, 1, "inf2")
    with pytest.raises(ValueError, match="no supported tp_degree on inf2 holds it"):
        platform.check_memory(400 * GiB, 0, 24, "inf2")
    assert platform.check_memory(40 * GiB, 0, 2, "trn2") == 20 * GiB       # 24 GiB logical cores (LNC=2)
    with pytest.raises(ValueError, match="trn2 NeuronCore-v3 \\(LNC=1\\) memory"):
        platform.check_memory(40 * GiB, 0, 2, "trn2", env={"NEURON_LOGICAL_NC_CONFIG": "1"})


def test_check_fit(caplog, tmp_path, monkeypatch):
    assert platform.check_fit(GiB, GiB, 8, "trn1") == "trn1"
    with pytest.raises(ValueError, match="tp_degree=4 is not supported on trn1"):
        platform.check_fit(GiB, GiB, 4, "trn1")
    with caplog.at_level(logging.WARNING, logger="hlo.runtime.neuron_platform"):
        assert platform.check_fit(GiB, GiB, 4) is None
    assert "the Neuron target is unknown" in caplog.text
    product = tmp_path / "product_name"
    product.write_text("inf2.48xlarge\n")
    monkeypatch.setattr(platform, "INSTANCE_TYPE_FILE", str(product))
    assert platform.check_fit(GiB, GiB, 24) == "inf2"
    monkeypatch.setenv("HLO_NEURON_TARGET", "trn1")
    with pytest.raises(ValueError, match="tp_degree=24 is not supported on trn1"):
        platform.check_fit(GiB, GiB, 24)


def test_target_from_instance_type():
    assert [platform.target_from_instance_type(t) for t in
            ("trn1.32xlarge", "trn1n.32xlarge", "inf2.xlarge", "trn2.48xlarge", "trn2u.48xlarge", "m5.large", None)
            ] == ["trn1", "trn1n", "inf2", "trn2", "trn2", None, None]
    with pytest.raises(ValueError, match="unknown Neuron target 'inf1'"):
        platform.resolve_target("inf1")


# ------------------------------------------------------------------------------------------------ core placement
def test_parse_visible_cores():
    assert platform.parse_visible_cores("3") == [3]
    assert platform.parse_visible_cores("0-7") == list(range(8))
    assert platform.parse_visible_cores("0-1,4") == [0, 1, 4]
    for bad in ("a", "3-1", "-2", "0-3,2"):
        with pytest.raises(ValueError, match="NEURON_RT_VISIBLE_CORES"):
            platform.parse_visible_cores(bad)


def test_core_placement_checks(caplog):
    with pytest.raises(ValueError, match=r"tp_degree=8 needs 8 NeuronCores, but NEURON_RT_VISIBLE_CORES=4-7 "
                                         r"\(4 cores\) gives this process 4: set NEURON_RT_VISIBLE_CORES=4-11, or "
                                         r"lower tp_degree"):
        platform.check_core_placement(8, env={"NEURON_RT_VISIBLE_CORES": "4-7"})
    with pytest.raises(ValueError, match="NEURON_RT_NUM_CORES=2 gives this process 2: set NEURON_RT_NUM_CORES=4"):
        platform.check_core_placement(4, env={"NEURON_RT_NUM_CORES": "2"})
    with pytest.raises(ValueError, match="names NeuronCore 5, but this instance has 4"):
        platform.check_core_placement(2, env={"NEURON_RT_VISIBLE_CORES": "4-5"}, available=4)
    with pytest.raises(ValueError, match="this instance has 2: lower tp_degree"):
        platform.check_core_placement(8, env={}, available=2)
    with pytest.raises(ValueError, match="NEURON_RT_NUM_CORES='x'"):
        platform.check_core_placement(1, env={"NEURON_RT_NUM_CORES": "x"})
    with caplog.at_level(logging.INFO, logger="hlo.runtime.neuron_platform"):
        placement = platform.check_core_placement(2, env={"NEURON_RT_VISIBLE_CORES": "0-3", "NEURON_RT_NUM_CORES": "1"})
    assert placement.visible == (0, 1, 2, 3)
    assert "NEURON_RT_NUM_CORES=1 is ignored" in caplog.text
    assert "reserves 4 NeuronCores for this process, which uses 2" in caplog.text


def test_runtime_checks_placement_and_tp_before_starting(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1")
    with pytest.raises(ValueError, match="tp_degree=8 needs 8 NeuronCores"):
        NeuronRuntime(8, target="inf2", device=XlaCpuStandIn())
    with pytest.raises(ValueError, match="tp_degree=4 is not supported on trn1"):
        NeuronRuntime(4, target="trn1", device=XlaCpuStandIn())


# -------------------------------------------------------------------------------- backend selection and info
def test_backend_falls_back_with_a_clear_log_line(caplog, tmp_path, no_cc):
    from nllb_neuronx.backend import select_backend
    with caplog.at_level(logging.INFO, logger="nllb_neuronx.backend"):
        backend = select_backend(None, 1)
    assert backend in ("xla-cpu", "xla-gpu")
    assert f"using {backend}: the neuron backend is unavailable (no Neuron devices (/dev/neuron*)" in caplog.text

    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "neuron0").touch()       # devices, but no SDK
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nllb_neuronx.backend"):
        select_backend(None, 1)
    assert "pjrt route: the Neuron PJRT plugin (libneuronxla) is not installed" in caplog.text
    assert "aot route: neuronx-cc is not on PATH" in caplog.text and "torch-neuronx is not installed" in caplog.text
    assert select_backend("xla-cpu", 1) == "xla-cpu"


def test_backend_picks_neuron_where_a_route_is_complete(tmp_path, fake_cc, monkeypatch):
    from nllb_neuronx.backend import select_backend
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "neuron0").touch()
    fake_pkg = tmp_path / "site"
    (fake_pkg / "torch_neuronx").mkdir(parents=True)
    (fake_pkg / "torch_neuronx" / "__init__.py").write_text("raise ImportError('a stand-in, never imported')\n")
    monkeypatch.syspath_prepend(str(fake_pkg))
    monkeypatch.setenv("HLO_NEURON_TARGET", "inf2")
    found = platform.probe()
    assert found.routes["aot"] is None and found.cores == 2
    assert select_backend(None, 1) == "neuron"


def test_info_reports_what_it_found(capsys, tmp_path, monkeypatch, fake_cc):
    from nllb_neuronx.cli import main
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-3")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Neuron devices: none (" in out
    assert "Neuron PJRT plugin: not installed" in out
    assert f"neuronx-cc: {tmp_path / 'bin' / 'neuronx-cc'}" in out
    assert "NeuronCores for this process: NEURON_RT_VISIBLE_CORES=0-3 (4 cores)" in out
    assert "Neuron route pjrt: unavailable: no Neuron devices" in out
    assert "Neuron route aot: unavailable: no Neuron devices" in out and "torch-neuronx is not installed" in out


def test_model_checks_tp_and_memory_before_any_device_work(tiny_checkpoint, monkeypatch):
    """NLLBForSampling.to_neuron() on the neuron backend refuses a tp the target lacks, with the target's list."""
    from nllb_neuronx import NLLBForSampling

    monkeypatch.setenv("HLO_NEURON_TARGET", "inf2")
    model = NLLBForSampling.from_pretrained(tiny_checkpoint[0], tp_degree=16, backend="neuron", n_positions=[8],
                                            encoder_buckets=[8])
    with pytest.raises(ValueError, match="tp_degree=16 .*inf2.*1, 2, 4, 8, 24"):
        model.to_neuron()
    assert model.runtime is None
