"""Ahead-of-time compilation for NeuronCores: the `neuronx-cc` command line, and the store of the NEFFs it writes.

    compiler = NeuronCompiler(target="inf2", tp_degree=8, cache_dir="compiled/")
    neff = compiler.compile(module)           # runs neuronx-cc once per (HLO, target, tp, flags, compiler version)
    neff.path                                 # compiled/<key>.neff

The command (neuronx-cc CLI reference, https://awsdocs-neuron.readthedocs-hosted.com/en/latest/compiler/neuronx-cc/
api-reference-guide/neuron-compiler-cli-reference-guide.html):

    neuronx-cc compile model.hlo.pb --framework XLA --target <trn1|trn1n|inf2|trn2> --model-type transformer \
        --auto-cast none -O<1|2|3> --output model.neff [NEURON_CC_FLAGS...]

`NEURON_CC_FLAGS` (the variable the Neuron frameworks forward to the compiler) extends the command; a flag it sets
replaces our default for that flag (`--auto-cast=matmult`, `-O1`, `--model-type=generic`); `--framework` and
`--output` belong to this module, and a `--target` there must agree with the runtime's target.

Compilation needs only the compiler, not Neuron devices: NEFFs can be built on any machine with `neuronx-cc`.
The NEFF key includes the compiler version as `neuronx-cc --version` reports it (asked once per binary), so it is
right however the compiler was installed. A neuronx-cc process takes gigabytes of memory: however many threads
compile, at most `compile_workers()` = min(CPUs, available memory / `HLO_NEURON_COMPILE_MEMORY_GIB`) run at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from hlo.builder import Module
from hlo.runtime.neuron_platform import INSTALL_COMPILER, TARGETS

log = logging.getLogger(__name__)

FLAGS_ENV = "NEURON_CC_FLAGS"
OPTLEVEL_ENV = "HLO_NEURON_OPTLEVEL"
OPTLEVELS = (1, 2, 3)
DEFAULT_OPTLEVEL = 2
DEFAULT_FLAGS = (("--model-type", "transformer"), ("--auto-cast", "none"))
_OWNED = ("--framework", "--output")
# Collectives whose empty replica_groups mean "all replicas": written out explicitly for neuronx-cc, which has no
# replica count of its own (an HloModuleProto does not carry one).
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")


def _flag_name(token: str) -> str | None:
    if token.startswith("-O") and token[2:].isdigit():
        return "--optlevel"
    if token.startswith("-"):
        name = token.split("=", 1)[0]
        return {"-O": "--optlevel", "-lnc": "--logical-nc-config"}.get(name, name)
    return None


def _flag_value(flags: Sequence[str], name: str) -> str | None:
    for i, token in enumerate(flags):
        if _flag_name(token) == name:
            if "=" in token:
                return token.split("=", 1)[1]
            if token.startswith("-O") and token[2:]:
                return token[2:]
            return flags[i + 1] if i + 1 < len(flags) else None
    return None


def _drop_flag(flags: Sequence[str], name: str) -> list[str]:
    out, skip = [], False
    for i, token in enumerate(flags):
        if skip:
            skip = False
            continue
        if _flag_name(token) == name:
            skip = "=" not in token and i + 1 < len(flags) and not flags[i + 1].startswith("-")
            continue
        out.append(token)
    return out


def env_flags(env: Mapping[str, str] | None = None) -> list[str]:
    """`NEURON_CC_FLAGS`, split as a shell would."""
    text = (os.environ if env is None else env).get(FLAGS_ENV, "")
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ValueError(f"{FLAGS_ENV}={text!r} cannot be split into arguments: {e}") from None


def env_optlevel(env: Mapping[str, str] | None = None) -> int:
    text = (os.environ if env is None else env).get(OPTLEVEL_ENV, "").strip()
    if not text:
        return DEFAULT_OPTLEVEL
    if not text.isdigit() or int(text) not in OPTLEVELS:
        raise ValueError(f"{OPTLEVEL_ENV}={text!r}: neuronx-cc optimization levels are {OPTLEVELS}")
    return int(text)


def compiler_command(hlo_path, neff_path, target: str, optlevel: int = DEFAULT_OPTLEVEL,
                     flags: Sequence[str] = (), executable: str = "neuronx-cc") -> list[str]:
    """The neuronx-cc argv that compiles `hlo_path` (a serialized HloModuleProto) into `neff_path` for `target`."""
    if target not in TARGETS:
        raise ValueError(f"unknown Neuron target {target!r}; choose one of {', '.join(TARGETS)}")
    if optlevel not in OPTLEVELS:
        raise ValueError(f"optlevel must be one of {OPTLEVELS}, got {optlevel!r}")
    flags = list(flags)
    names = {_flag_name(t) for t in flags} - {None}
    owned = [n for n in _OWNED if n in names]
    if owned:
        raise ValueError(f"{FLAGS_ENV} sets {', '.join(owned)}, which the Neuron runtime sets itself (XLA input, "
                         "a NEFF in its artifact store): remove it from NEURON_CC_FLAGS")
    if "--target" in names:
        flag_target = _flag_value(flags, "--target")
        if flag_target != target:
            raise ValueError(f"{FLAGS_ENV} sets --target {flag_target}, but this runtime compiles for {target}: "
                             f"remove --target from {FLAGS_ENV} and choose the target with target= or "
                             f"HLO_NEURON_TARGET={flag_target}")
        flags = _drop_flag(flags, "--target")
    command = [executable, "compile", str(hlo_path), "--framework", "XLA", "--target", target]
    for name, value in DEFAULT_FLAGS:
        if name not in names:
            command += [name, value]
    if "--optlevel" not in names:
        command.append(f"-O{optlevel}")
    return command + ["--output", str(neff_path)] + flags


def hlo_for_neuronx_cc(module: Module, tp_degree: int) -> bytes:
    """The module's HloModuleProto bytes with every collective's replica groups spelled out for `tp_degree` ranks."""
    proto = module.to_proto()
    if tp_degree > 1:
        for computation in proto.computations:
            for inst in computation.instructions:
                if inst.opcode in _COLLECTIVES and not inst.replica_groups:
                    inst.replica_groups.add(replica_ids=list(range(tp_degree)))
    return proto.SerializeToString(deterministic=True)


_VERSIONS: dict[tuple, str] = {}


def compiler_version(executable: str | None = None) -> str:
    """The version of the neuronx-cc that compiles: asked of the binary (`neuronx-cc --version`, once per binary and
    modification time), so that it is known however the compiler was installed; the pip package's version where the
    binary does not answer; "unknown" where neither is found."""
    path = executable or shutil.which("neuronx-cc")
    if path is not None:
        try:
            stat = os.stat(path)
            cache_key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            cache_key = None
        if cache_key is not None and cache_key in _VERSIONS:
            return _VERSIONS[cache_key]
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
            text = " ".join((done.stdout.strip() or done.stderr.strip()).split())
            version = text if done.returncode == 0 and text else None
        except (OSError, subprocess.TimeoutExpired):
            version = None
        if version is not None:
            if cache_key is not None:
                _VERSIONS[cache_key] = version
            return version
    import importlib.metadata
    try:
        return importlib.metadata.version("neuronx-cc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------- parallel compiles
COMPILE_MEMORY_ENV = "HLO_NEURON_COMPILE_MEMORY_GIB"
# Memory one neuronx-cc process may take. Our assumption, not a measurement: AWS documents no figure; compiling a
# transformer layer stack is reported to take several GiB. Set HLO_NEURON_COMPILE_MEMORY_GIB to what you observe.
DEFAULT_COMPILE_MEMORY_GIB = 8.0


def available_memory() -> int | None:
    """Bytes of memory available to new processes (MemAvailable of /proc/meminfo), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def compile_workers(cpus: int | None = None, available: int | None = None,
                    per_compile: float | None = None, env: Mapping[str, str] | None = None) -> int:
    """How many neuronx-cc processes may run at once: min(CPUs, available memory / memory per compile), at least 1.
    Defaults: this machine's CPUs and available memory, `HLO_NEURON_COMPILE_MEMORY_GIB` (else 8) GiB per compile."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    available = available if available is not None else available_memory()
    if per_compile is None:
        text = (os.environ if env is None else env).get(COMPILE_MEMORY_ENV, "").strip()
        try:
            gib = float(text) if text else DEFAULT_COMPILE_MEMORY_GIB
            if not gib > 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{COMPILE_MEMORY_ENV}={text!r}: expected a positive number of GiB") from None
        per_compile = gib * (1 << 30)
    by_memory = cpus if available is None else int(available // per_compile)
    return max(1, min(cpus, by_memory))


_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _compile_slots(workers: int) -> threading.BoundedSemaphore:
    """The process-wide limit on concurrent neuronx-cc runs (one semaphore per limit)."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(workers, threading.BoundedSemaphore(workers))


# --------------------------------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class Neff:
    key: str
    path: Path
    name: str                        # the module's name

    def read(self) -> bytes:
        return self.path.read_bytes()


class NeffStore:
    """NEFFs on disk, `<directory>/<key>.neff`, each with `<key>.neff.json` saying how it was built."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.neff"

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() and path.stat().st_size > 0 else None

    def put(self, key: str, neff_file: Path, meta: dict) -> Path:
        """Copy `neff_file` in as `key` (atomically: concurrent writers leave one whole file), with its metadata."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._replace(f"{key}.neff.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
        self._replace(f"{key}.neff", lambda tmp: shutil.copyfile(neff_file, tmp))
        return self.path(key)

    def _replace(self, name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, self.directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


_PROCESS_STORE: NeffStore | None = None
# key -> a NEFF file this process compiled or found: copied into another store instead of compiling again
_KNOWN_NEFFS: dict[str, Path] = {}


def _process_store() -> NeffStore:
    """Where NEFFs go when no cache_dir is given: one temporary directory for the process."""
    global _PROCESS_STORE
    if _PROCESS_STORE is None:
        _PROCESS_STORE = NeffStore(tempfile.mkdtemp(prefix="hlo-neff-"))
    return _PROCESS_STORE


def forget_known_neffs() -> None:
    """Forget the NEFFs this process compiled or found elsewhere (as a new process would start)."""
    _KNOWN_NEFFS.clear()


class NeuronCompiler:
    """Compiles modules to NEFFs with neuronx-cc for one target and tp degree; keeps them in a NeffStore by key.

    At most `compile_workers()` neuronx-cc processes run at once in this process, however many threads compile."""

    def __init__(self, target: str, tp_degree: int, cache_dir: str | os.PathLike | None = None,
                 optlevel: int | None = None, flags: Sequence[str] | None = None, timeout: float | None = None,
                 env: Mapping[str, str] | None = None, on_compile: Callable[[str, str, float], None] | None = None):
        self.target, self.tp_degree = target, tp_degree
        self.optlevel = env_optlevel(env) if optlevel is None else optlevel
        self.flags = env_flags(env) if flags is None else list(flags)
        compiler_command("model.hlo.pb", "model.neff", target, self.optlevel, self.flags)  # validates now
        self.use_store(cache_dir)
        self.timeout = timeout
        self.env = env
        self.on_compile = on_compile     # (module name, key, seconds) after each real neuronx-cc run
        self.compile_count = 0  # real neuronx-cc runs by this compiler (not store hits)

    def use_store(self, cache_dir: str | os.PathLike | None) -> None:
        self.store = NeffStore(cache_dir) if cache_dir is not None else _process_store()

    def version(self) -> str:
        path = shutil.which("neuronx-cc", path=(os.environ if self.env is None else self.env).get("PATH"))
        return compiler_version(path)

    def key(self, hlo_bytes: bytes) -> str:
        h = hashlib.sha256(hlo_bytes)
        command = compiler_command("model.hlo.pb", "model.neff", self.target, self.optlevel, self.flags)
        h.update(f"|neuronx-cc={self.version()}|tp={self.tp_degree}|{shlex.join(command)}".encode())
        return h.hexdigest()[:32]

    def module_key(self, module: Module) -> str:
        return self.key(hlo_for_neuronx_cc(module, self.tp_degree))

    def executable(self) -> str:
        path = shutil.which("neuronx-cc", path=(os.environ if self.env is None else self.env).get("PATH"))
        if path is None:
            raise RuntimeError("neuronx-cc is not on PATH: the ahead-of-time Neuron route compiles HLO with it. "
                               f"Install the Neuron compiler ({INSTALL_COMPILER}) and activate its environment, or "
                               "use the PJRT route (jax-neuronx)")
        return path

    def compile(self, module: Module) -> Neff:
        hlo_bytes = hlo_for_neuronx_cc(module, self.tp_degree)
        key = self.key(hlo_bytes)
        found = self.store.get(key)
        if found is not None:
            log.info("NEFF for %s (%s tp=%d) found in %s", module.name, self.target, self.tp_degree, found)
            _KNOWN_NEFFS[key] = found
            return Neff(key, found, module.name)
        known = _KNOWN_NEFFS.get(key)
        if known is not None and known.is_file():  # compiled earlier in this process, into another store
            meta = known.with_name(known.name + ".json")
            path = self.store.put(key, known, json.loads(meta.read_text()) if meta.is_file() else {})
            return Neff(key, path, module.name)
        executable = self.executable()
        with _compile_slots(compile_workers(env=self.env)):
            path, seconds = self._run_compiler(module, hlo_bytes, key, executable)
        self.compile_count += 1
        _KNOWN_NEFFS[key] = path
        if self.on_compile is not None:
            self.on_compile(module.name, key, seconds)
        return Neff(key, path, module.name)

    def _run_compiler(self, module: Module, hlo_bytes: bytes, key: str, executable: str) -> tuple[Path, float]:
        workdir = Path(tempfile.mkdtemp(prefix=f"neuronx-cc-{module.name}-"))
        hlo_path, neff_path = workdir / "model.hlo.pb", workdir / "model.neff"
        hlo_path.write_bytes(hlo_bytes)
        command = compiler_command(hlo_path, neff_path, self.target, self.optlevel, self.flags, executable)
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=self.timeout,
                                  env=None if self.env is None else dict(self.env))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"neuronx-cc did not finish compiling {module.name!r} within {self.timeout}s; "
                               f"its work is in {workdir}. Command: {shlex.join(command)}") from None
        if done.returncode != 0:
            output = (done.stderr.strip() or done.stdout.strip())[-2000:]
            raise RuntimeError(f"neuronx-cc failed (exit {done.returncode}) compiling {module.name!r} for "
                               f"{self.target} tp={self.tp_degree}: {output or '(no output)'}\n"
                               f"Command: {shlex.join(command)}\nThe HLO and compiler logs are kept in {workdir}")
        if not neff_path.is_file() or neff_path.stat().st_size == 0:
            raise RuntimeError(f"neuronx-cc exited 0 but wrote no NEFF at {neff_path} for {module.name!r}. "
                               f"Command: {shlex.join(command)}")
        seconds = time.perf_counter() - start
        meta = {"module": module.name, "target": self.target, "tp_degree": self.tp_degree,
                "neuronx_cc": self.version(), "command": command[1:], "seconds": round(seconds, 3)}
        path = self.store.put(key, neff_path, meta)
        shutil.rmtree(workdir, ignore_errors=True)
        log.info("neuronx-cc compiled %s for %s tp=%d in %.1fs -> %s", module.name, self.target, self.tp_degree,
                 seconds, path)
        return path, seconds
