"""Corpus translation on Ray Data: one model replica per Ray actor, every row back in its place.

    import ray
    from nllb_neuronx.ray import translate_dataset

    ds = ray.data.read_text("corpus.txt", drop_empty_lines=False)      # keep empty lines: alignment
    out = translate_dataset(ds, "path/to/nllb-200-distilled-600M", "eng_Latn", "fra_Latn", replicas=4,
                            model_kwargs=dict(tp_degree=2, batch_size=16))
    out.write_parquet("translated/")          # columns: id, text, translation, error (+ the input's others)

Each actor loads one `Translator` and translates the batches Ray Data hands it. On Neuron (a cluster that reports the
`neuron_cores` resource) an actor asks for `tp_degree` NeuronCores and Ray sets NEURON_RT_VISIBLE_CORES for it;
elsewhere it asks for CPUs. Rows keep their alignment through an `id` column (added when the dataset has none) that
the result is sorted on; per-row target languages come from a column. A row that cannot be translated (too long for
the largest encoder bucket, an unknown target code, not a string) gets an empty translation and the reason in
`error`; the other rows of its batch are translated.

An actor that dies mid-job (a killed process, a lost node) is restarted by Ray and the batches it was running are
retried on it: Ray Data creates its actors with `max_restarts=-1` and `max_task_retries=-1` unless told otherwise
(ray/data/_internal/execution/operators/actor_pool_map_operator.py, `_apply_default_remote_args`), and a failed
batch's output never reaches the dataset, so no row is lost or duplicated (tests/test_ray.py kills an actor).

`translate_files` is `nllb-neuronx translate --ray`: files (or stdin) in, the plain CLI's output out.

Ray is an optional dependency (`pip install "nllb_neuronx[ray]"`), imported only when these functions run.
"""

from __future__ import annotations

import bisect
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

ID, TEXT, TARGET, TRANSLATION, ERROR = "id", "text", "tgt_lang", "translation", "error"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library, `ray[data]`)
    except ImportError as e:
        raise ImportError(f"Ray Data is not installed ({e}); pip install 'nllb_neuronx[ray]'") from None
    return ray


# ------------------------------------------------------------------------------------------------- the actor
class TranslateBatch:
    """Ray Data callable class: one model replica, loaded once per actor; each call translates one batch (numpy
    dict or pandas DataFrame) with a `text` column and, optionally, a per-row target language column (an empty
    or missing value there means `tgt_lang`). Adds `translation` and `error` columns; keeps every other column."""

    def __init__(self, model: str, src_lang: str, tgt_lang: str | None = None, *, tgt_lang_column: str | None = None,
                 model_kwargs: dict | None = None, translate_kwargs: dict | None = None):
        from nllb_neuronx.translator import Translator

        self.translator = Translator.from_pretrained(model, **(model_kwargs or {}))
        self.translator.language_id(src_lang)  # a bad source code fails the actor, not every row
        self.src_lang, self.tgt_lang, self.tgt_lang_column = src_lang, tgt_lang, tgt_lang_column
        self.translate_kwargs = dict(translate_kwargs or {})

    def __call__(self, batch):
        texts = list(batch[TEXT])
        targets = self._targets(batch, len(texts))
        translations, errors = [""] * len(texts), [""] * len(texts)
        known: dict[str, str] = {}
        for code in {t for t in targets if t}:
            try:
                self.translator.language_id(code)
                known[code] = ""
            except ValueError as e:
                known[code] = str(e)
        todo = []
        for i, code in enumerate(targets):
            errors[i] = "has no target language (tgt_lang is empty and no default was given)" if not code \
                else known[code]
            if not errors[i]:
                todo.append(i)
        self._translate(texts, targets, todo, translations, errors)
        batch[TRANSLATION] = np.array(translations, dtype=object)
        batch[ERROR] = np.array(errors, dtype=object)
        return batch

    def _targets(self, batch, n: int) -> list[str | None]:
        column = self.tgt_lang_column
        if column is None or column not in batch:
            return [self.tgt_lang] * n
        return [v if isinstance(v, str) and v else self.tgt_lang for v in batch[column]]

    def _translate(self, texts, targets, todo: list[int], translations: list[str], errors: list[str]) -> None:
        """Translate rows `todo`; a row the Translator refuses gets its reason and the rest are translated again
        (the Translator checks every row before it generates, so a refusal costs only tokenization)."""
        from nllb_neuronx.translator import TextError

        while todo:
            try:
                done = self.translator.translate([texts[i] for i in todo], self.src_lang, [targets[i] for i in todo],
                                                 **self.translate_kwargs)
            except TextError as e:
                errors[todo[e.index]] = e.detail
                todo = todo[: e.index] + todo[e.index + 1:]
                continue
            for i, text in zip(todo, done):
                translations[i] = text
            return


# ------------------------------------------------------------------------------------------------ the dataset
def translate_dataset(ds, model: str, src_lang: str, tgt_lang: str | None = None, *,
                      tgt_lang_column: str | None = None, replicas: int = 1, batch_size: int = 64,
                      model_kwargs: dict | None = None, translate_kwargs: dict | None = None,
                      neuron_cores_per_replica: int | None = None, num_cpus_per_replica: float = 1,
                      actor_class: type = TranslateBatch):
    """`ds` (a Ray Dataset with a `text` column) translated by `replicas` actors, one model replica each, sorted by
    its `id` column (added, numbering rows in the dataset's order, when missing: that costs one pass to count).

    tgt_lang: one target code for every row, and the default for rows whose `tgt_lang_column` value is empty.
    batch_size: rows per Ray batch (one actor call); the Translator sorts them by length into model batches.
    model_kwargs: `Translator.from_pretrained` keywords (tp_degree, batch_size, compiled_dir, ...).
    translate_kwargs: `Translator.translate` keywords (num_beams, max_new_tokens, split_long, ...).
    neuron_cores_per_replica: NeuronCores each actor asks for; None: tp_degree where the cluster has the
    `neuron_cores` resource, else none (CPU replicas). num_cpus_per_replica: CPUs each actor asks for.
    actor_class: TranslateBatch or a subclass of it (to log, count or time batches).
    """
    ray = _import_ray()
    if tgt_lang is None and tgt_lang_column is None:
        raise ValueError("give tgt_lang (one code) or tgt_lang_column (a column of codes), or both")
    if not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
    columns = ds.columns() or []
    for name, what in ((TEXT, "the texts"), (tgt_lang_column, "the target languages")):
        if name is not None and name not in columns:
            raise ValueError(f"the dataset has no {name!r} column for {what}; its columns are {columns}")
    if ID not in columns:  # positional (a plan with a zip keeps the dataset's order); materialized so that the
        # reads are done before the actors take their CPUs (on a small cluster they would otherwise wait forever)
        ds = ds.zip(ray.data.range(ds.count())).materialize()
    model_kwargs = dict(model_kwargs or {})
    resources = _replica_resources(ray, model_kwargs.get("tp_degree", 1), neuron_cores_per_replica)
    _warn_if_cluster_too_small(ray, replicas, num_cpus_per_replica, resources)
    translated = ds.map_batches(
        actor_class, fn_constructor_args=(model, src_lang, tgt_lang),
        fn_constructor_kwargs=dict(tgt_lang_column=tgt_lang_column, model_kwargs=model_kwargs,
                                   translate_kwargs=translate_kwargs),
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=num_cpus_per_replica, resources=resources, udf_modifying_row_count=False)
    # The sort's reducers hand their partitions on in ascending order (`preserve_partition_order=True` in
    # ray/data/_internal/planner/plan_all_to_all_op.py), so iterating the result goes in id order.
    return translated.sort(ID)


def _replica_resources(ray, tp_degree: int, neuron_cores: int | None) -> dict | None:
    if neuron_cores is None:
        neuron_cores = tp_degree if ray.cluster_resources().get("neuron_cores", 0) >= 1 else 0
    if not isinstance(neuron_cores, int) or neuron_cores < 0:
        raise ValueError(f"neuron_cores_per_replica must be a whole number (Ray refuses fractions of NeuronCores), "
                         f"got {neuron_cores!r}")
    return {"neuron_cores": neuron_cores} if neuron_cores else None


def _warn_if_cluster_too_small(ray, replicas: int, num_cpus: float, resources: dict | None) -> None:
    """Ray waits for resources a cluster may gain (autoscaling), so too few now is a warning, not an error."""
    total = ray.cluster_resources()
    wanted = {"CPU": replicas * num_cpus, **{k: replicas * v for k, v in (resources or {}).items()}}
    short = {k: (v, total.get(k, 0)) for k, v in wanted.items() if v > total.get(k, 0)}
    if short:
        log.warning("%d replicas need %s, the cluster has %s now: the job waits until it grows",
                    replicas, {k: v for k, (v, _) in short.items()}, {k: t for k, (_, t) in short.items()})
    elif wanted["CPU"] >= total.get("CPU", 0):
        log.warning("%d replicas take all %s CPUs of the cluster: reads streamed into them (read_text, ...) wait "
                    "until the replicas finish; materialize the input first or lower num_cpus_per_replica",
                    replicas, total.get("CPU", 0))


# ------------------------------------------------------------------------------------------ files (the CLI)
@dataclass
class Source:
    """One input (a file, or stdin) read whole: its rows' texts and per-row targets, and the JSON records of a
    jsonl input (written back with `translation` added)."""
    name: str
    output: Path | None
    texts: list[str] = field(default_factory=list)
    targets: list[str | None] = field(default_factory=list)
    records: list[dict | None] = field(default_factory=list)


def read_sources(input_path: str | None, output_path: str | None, input_format: str = "text") -> list[Source]:
    """stdin (None), one file, or every file under a directory (hidden ones skipped; outputs named after the inputs
    under the output directory). Invalid UTF-8 or JSON is a ValueError naming the file and line."""
    if input_format not in ("text", "jsonl"):
        raise ValueError(f"input format must be text or jsonl, got {input_format!r}")
    if input_path is None:
        pairs = [("<stdin>", sys.stdin.buffer, Path(output_path) if output_path else None)]
        return [_read(name, stream, out, input_format) for name, stream, out in pairs]
    root = Path(input_path)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    if root.is_file():
        with open(root, "rb") as stream:
            return [_read(str(root), stream, Path(output_path) if output_path else None, input_format)]
    if output_path is None or Path(output_path).is_file():
        raise ValueError(f"input {root} is a directory: give an output directory with -o DIR")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"input directory {root} has no files")
    sources = []
    for path in files:
        with open(path, "rb") as stream:
            sources.append(_read(str(path), stream, Path(output_path) / path.relative_to(root), input_format))
    return sources


def _read(name: str, stream, output: Path | None, input_format: str) -> Source:
    source = Source(name, output)
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{_where(name, number)} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        record = _json_row(line, name, number) if input_format == "jsonl" else None
        source.records.append(record)
        source.texts.append(line if input_format == "text" else record[TEXT] if record else "")
        source.targets.append(record.get(TARGET) if record else None)
    return source


def _json_row(line: str, name: str, number: int) -> dict | None:
    """One jsonl row, `{"text": str, "tgt_lang": str (optional)}`; an empty line stays an empty line (None)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{_where(name, number)} is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get(TEXT), str):
        raise ValueError(f'{_where(name, number)} must be a JSON object with a string "text" (and optionally '
                         f'"tgt_lang"), got {line[:80]!r}')
    if record.get(TARGET) is not None and not isinstance(record[TARGET], str):
        raise ValueError(f'{_where(name, number)} has a "tgt_lang" that is not a string: {record[TARGET]!r}')
    return record


def _where(name: str, number: int) -> str:
    return f"line {number}" if name == "<stdin>" else f"{name}: line {number}"


def check_languages(model: str, src_lang: str, targets: Sequence[str | None]) -> None:
    """Language codes checked with the checkpoint's tokenizer in this process, before any replica loads weights
    (the same errors as the plain CLI's)."""
    from transformers import AutoTokenizer

    from nllb_neuronx.translator import Translator
    from nllb_neuronx.weights import resolve_path

    codes = Translator(AutoTokenizer.from_pretrained(resolve_path(model)), model=None)  # the tokenizer is enough
    for code in [src_lang, *sorted({t for t in targets if t})]:
        codes.language_id(code)


def translate_files(input_path: str | None, output_path: str | None, model: str, src_lang: str,
                    tgt_lang: str | None, *, input_format: str = "text", replicas: int = 1,
                    address: str | None = None, batch_size: int = 64, model_kwargs: dict | None = None,
                    translate_kwargs: dict | None = None, neuron_cores_per_replica: int | None = None) -> int:
    """`nllb-neuronx translate --ray`: read the inputs here, translate them on Ray (`address`, or a local cluster
    started and stopped here), write one line per input line in order, as the plain CLI does (jsonl: each record
    with `translation` added). Returns the number of lines; a row that cannot be translated is a ValueError
    naming its file and line (the lines before it are written)."""
    sources = read_sources(input_path, output_path, input_format)
    targets = [t or tgt_lang for s in sources for t in s.targets]
    if any(t is None for t in targets):
        first = next(i for i, t in enumerate(targets) if t is None)
        name, number = _locate(sources, first)
        raise ValueError(f"{_where(name, number)} has no tgt_lang and no default target was given (--tgt)")
    check_languages(model, src_lang, targets)
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        texts = [t for s in sources for t in s.texts]
        ds = _rows_dataset(ray, texts, targets, batch_size)
        out = translate_dataset(ds, model, src_lang, tgt_lang, tgt_lang_column=TARGET, replicas=replicas,
                                batch_size=batch_size, model_kwargs=model_kwargs, translate_kwargs=translate_kwargs,
                                neuron_cores_per_replica=neuron_cores_per_replica)
        return _write(sources, out.iter_batches(batch_format="numpy", batch_size=batch_size))
    finally:
        if started:
            ray.shutdown()


def _rows_dataset(ray, texts: list[str], targets: list[str], rows_per_block: int):
    """id, text, tgt_lang; one block per `rows_per_block` rows so that the actors share the work."""
    import pandas as pd

    frame = pd.DataFrame({ID: np.arange(len(texts), dtype=np.int64), TEXT: texts, TARGET: targets})
    blocks = [frame.iloc[i: i + rows_per_block] for i in range(0, len(frame), rows_per_block)] or [frame]
    return ray.data.from_pandas(blocks)


def _locate(sources: list[Source], row: int) -> tuple[str, int]:
    starts = np.cumsum([0] + [len(s.texts) for s in sources]).tolist()
    k = bisect.bisect_right(starts, row) - 1
    return sources[k].name, row - starts[k] + 1


def _write(sources: list[Source], batches) -> int:
    """Write each source's lines to its output (stdout when none), checking that rows come back in order, each
    exactly once."""
    streams: dict[int, Any] = {}
    starts = np.cumsum([0] + [len(s.texts) for s in sources]).tolist()
    expected = 0
    try:
        for batch in batches:
            for row, translation, error in zip(batch[ID].tolist(), batch[TRANSLATION], batch[ERROR]):
                if row != expected:
                    raise RuntimeError(f"row {row} came back where row {expected} was expected")
                k = bisect.bisect_right(starts, row) - 1
                name, number = sources[k].name, row - starts[k] + 1
                if error:
                    raise ValueError(f"{_where(name, number)} {error}")
                stream = streams.get(k) or streams.setdefault(k, _open(sources[k]))
                record = sources[k].records[number - 1]
                stream.write((translation if record is None else
                              json.dumps({**record, TRANSLATION: translation}, ensure_ascii=False)) + "\n")
                expected += 1
    finally:
        for stream in streams.values():
            stream.flush()
            if stream is not sys.stdout:
                stream.close()
    if expected != starts[-1]:
        raise RuntimeError(f"{starts[-1] - expected} rows did not come back from Ray")
    for k, source in enumerate(sources):  # an empty input file gets an empty output file
        if k not in streams and source.output is not None:
            _open(source).close()
    return expected


def _open(source: Source):
    if source.output is None:
        return sys.stdout
    source.output.parent.mkdir(parents=True, exist_ok=True)
    return open(source.output, "w", encoding="utf-8")


def run_cli(args, model_kwargs: dict) -> int:
    """The `translate --ray` branch of the CLI: `args` are its parsed options."""
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    translate_kwargs = dict(num_beams=args.beams, split_long=args.split_long, max_new_tokens=args.max_new_tokens)
    translate_files(args.input, args.output, args.model, args.src, args.tgt, input_format=args.input_format,
                    replicas=args.replicas, address=args.ray_address, model_kwargs=model_kwargs,
                    translate_kwargs=translate_kwargs)
    return 0
