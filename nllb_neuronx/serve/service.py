"""TranslationService: texts in, engine requests out, and back to texts.

    service = TranslationService(engine, tokenizer, model)
    job = service.prepare(["Hello world."], "eng_Latn", "fra_Latn")     # RequestError (a 400) for bad input
    futures = service.submit(job)                                       # QueueFull (a 503) when the queue is full
    service.finish(job, [f.result() for f in futures]).translations

Every non-empty text becomes one engine request (or one per sentence with `split_long`) made by the `Translator`'s
`requests()`, so the server tokenizes, splits sentences, derives seeds and rejoins sentences (`sentence_separator`)
as the Translator and the CLI do. Empty texts give empty translations. Nothing is truncated: a text longer than the
largest encoder bucket is an error naming it.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nllb_neuronx.engine_api import Engine, GenerationRequest, SamplingParams
from nllb_neuronx.model import NLLBForSampling
from nllb_neuronx.translator import TextError, TextTooLong, Translator, sentence_separator


class RequestError(ValueError):
    """A problem with the request itself (answered 400), with a message naming the field and the fix."""


@dataclass(frozen=True)
class TranslationOptions:
    num_beams: int = 1
    max_new_tokens: int | None = None      # None: generation_config's default, capped at the largest bucket
    sampling: SamplingParams | None = None
    split_long: bool = False


@dataclass
class TranslationJob:
    """A request's lines as engine requests: `owners[i]` is the text index of `requests[i]`; `targets[t]` is text
    t's target language."""

    texts: int
    requests: list[GenerationRequest]
    owners: list[int]
    targets: list[str]
    input_tokens: int = field(init=False)

    def __post_init__(self):
        self.input_tokens = sum(len(r.input_ids) for r in self.requests)


@dataclass(frozen=True)
class TranslationResult:
    translations: list[str]
    input_tokens: int
    output_tokens: int       # generated after the forced language token, EOS included


class TranslationService:
    def __init__(self, engine: Engine, tokenizer, model: NLLBForSampling, model_name: str | None = None,
                 max_lines: int | None = None):
        """`max_lines`: the most lines (after splitting) one request may queue; None for no limit."""
        self.engine, self.tokenizer, self.model = engine, tokenizer, model
        self.model_name = model_name or model.checkpoint.path.name
        self.max_lines = max_lines
        self.max_new_tokens = model.compile_config.max_target_length
        self._translator = Translator(tokenizer, model)   # language checks, tokenizing and splitting (not its engine)
        self._codes = self._translator.language_codes()
        self._ids: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------ languages
    def language_codes(self) -> list[str]:
        return list(self._codes)

    def language_id(self, code, field_name: str = "target") -> int:
        if not isinstance(code, str):
            raise RequestError(f"{field_name} must be a language code string, got {type(code).__name__}")
        if code not in self._ids:
            try:
                self._ids[code] = self._translator.language_id(code)
            except ValueError as e:
                raise RequestError(f"{field_name}: {e}") from None
        return self._ids[code]

    # ------------------------------------------------------------------------------------------------ requests
    def prepare(self, texts: Sequence[str], source: str, target: str | Sequence[str],
                options: TranslationOptions = TranslationOptions()) -> TranslationJob:
        """Check and tokenize; a RequestError names the first problem."""
        texts = list(texts)
        targets = [target] * len(texts) if isinstance(target, str) else list(target)
        if len(targets) != len(texts):
            raise RequestError(f"target has {len(targets)} codes for {len(texts)} texts: give one code, or one per "
                               "text")
        self.language_id(source, "source")
        for code in targets:
            self.language_id(code)
        max_new = options.max_new_tokens
        if max_new is None:
            max_new = self._translator.default_max_new_tokens()
        if not 1 <= max_new <= self.max_new_tokens:
            raise RequestError(f"max_new_tokens must lie in [1, {self.max_new_tokens}] (the largest decoder bucket "
                               f"this server compiled), got {max_new}")
        if not 1 <= options.num_beams <= self.model.batch_size:
            raise RequestError(f"num_beams must lie in [1, {self.model.batch_size}] (the compiled batch size), got "
                               f"{options.num_beams}")
        if options.num_beams > 1 and options.sampling is not None:
            raise RequestError("num_beams > 1 with sampling is not supported: give one or the other")
        try:
            per_text = self._translator.requests(texts, source, targets, options.num_beams, max_new,
                                                 options.sampling, options.split_long)
        except TextTooLong as e:
            raise RequestError(f"text {e.index} has {e.tokens} tokens, more than the largest encoder bucket "
                               f"({e.limit}); pass \"split_long\": true to split it on sentence boundaries, or "
                               "send shorter texts") from None
        except TextError as e:
            raise RequestError(str(e)) from None
        requests = [request for text_requests in per_text for request in text_requests]
        owners = [index for index, text_requests in enumerate(per_text) for _ in text_requests]
        if self.max_lines is not None and len(requests) > self.max_lines:
            raise RequestError(f"the request has {len(requests)} lines to translate; this server queues at most "
                               f"{self.max_lines} per request (--max-queue): send fewer texts per request")
        return TranslationJob(len(texts), requests, owners, targets)

    def submit(self, job: TranslationJob) -> list[concurrent.futures.Future]:
        """All of a job's lines into the engine, or none: on QueueFull the lines already queued are withdrawn."""
        futures = []
        try:
            for request in job.requests:
                futures.append(self.engine.submit(request))
        except Exception:  # QueueFull, EngineClosed
            for f in futures:
                f.cancel()
            raise
        return futures

    def finish(self, job: TranslationJob, outputs: Sequence[np.ndarray]) -> TranslationResult:
        texts = self.tokenizer.batch_decode([np.asarray(o) for o in outputs], skip_special_tokens=True) \
            if outputs else []
        parts: list[list[str]] = [[] for _ in range(job.texts)]
        for owner, text in zip(job.owners, texts):
            parts[owner].append(text)
        output_tokens = sum(max(len(o) - 2, 0) for o in outputs)
        joined = [sentence_separator(target).join(p) for p, target in zip(parts, job.targets)]
        return TranslationResult(joined, job.input_tokens, output_tokens)

    def translate(self, texts: Sequence[str], source: str, target: str | Sequence[str],
                  options: TranslationOptions = TranslationOptions(), timeout: float | None = None) \
            -> TranslationResult:
        """Blocking: prepare, submit, wait at most `timeout` seconds in all (then every line is withdrawn and
        concurrent.futures.TimeoutError raised), finish."""
        import time

        job = self.prepare(texts, source, target, options)
        futures = self.submit(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self.finish(job, [f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
                                     for f in futures])
        finally:
            for f in futures:
                f.cancel()
