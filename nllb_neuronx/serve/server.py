"""`nllb-neuronx serve`: load, compile, and serve the app with uvicorn; SIGTERM drains and exits 0.

The model loads in a thread while the server already answers /health (and /ready with 503); /ready says 200 once
the programs are compiled (`warmup="compile"`: every program of the shape, or loaded from `compiled_dir`) and short
requests (one line, a full batch, beams) went through the engine, which compiles the engine's own programs. On
SIGTERM (or Ctrl+C) uvicorn stops accepting connections and waits for the requests in flight; then the engine finishes
its queue and stops, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

from nllb_neuronx.serve.app import create_app
from nllb_neuronx.serve.service import TranslationOptions, TranslationService

log = logging.getLogger("nllb_neuronx.serve")

WARMUPS = ("compile", "request")


@dataclass(frozen=True)
class ServeOptions:
    model: str
    model_kwargs: dict = field(default_factory=dict)   # NLLBForSampling.from_pretrained's shape options
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 256                               # lines waiting for a slot; also the most lines per request
    request_timeout_s: float | None = 60.0
    continuous_batching: bool = True
    warmup: str = "compile"                            # "compile": every program now; "request": what one needs

    def __post_init__(self):
        if self.max_queue < 1:
            raise ValueError(f"--max-queue must be at least 1, got {self.max_queue}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"--request-timeout must be positive, got {self.request_timeout_s}")
        if self.warmup not in WARMUPS:
            raise ValueError(f"--warmup must be one of {', '.join(WARMUPS)}, got {self.warmup!r}")


def make_engine(model, max_queue: int | None, continuous_batching: bool = True):
    """SlotEngine (continuous batching) where nllb_neuronx.engine exists, else BatchEngine (one batch at a time)."""
    if continuous_batching:
        try:
            from nllb_neuronx.engine import SlotEngine
        except ImportError:
            log.warning("nllb_neuronx.engine (continuous batching) is not available: serving one batch at a time")
        else:
            return SlotEngine(model, max_queue=max_queue)
    from nllb_neuronx.batch_engine import BatchEngine
    return BatchEngine(model, max_queue=max_queue)


def load_service(options: ServeOptions) -> TranslationService:
    import time

    from transformers import AutoTokenizer

    from nllb_neuronx.model import NLLBForSampling

    start = time.perf_counter()
    model = NLLBForSampling.from_pretrained(options.model, **options.model_kwargs).to_neuron()
    if options.warmup == "compile":
        model.compile_all()
    tokenizer = AutoTokenizer.from_pretrained(str(model.checkpoint.path))
    engine = make_engine(model, options.max_queue, options.continuous_batching)
    service = TranslationService(engine, tokenizer, model, max_lines=options.max_queue)
    code = service.language_codes()[0]
    for lines in (1, model.batch_size):                       # the engine's own programs: one line, a full batch
        service.translate(["Hello."] * lines, code, code, TranslationOptions(max_new_tokens=2))
    if model.batch_size > 1:                                                          # and beam search's
        try:
            service.translate(["Hello."], code, code, TranslationOptions(num_beams=2, max_new_tokens=2))
        except NotImplementedError as e:
            log.warning("beam search: %s", e)
    log.info("model %s ready in %.1f s (%s)", service.model_name, time.perf_counter() - start, type(engine).__name__)
    return service


def serve(options: ServeOptions) -> None:
    """Run until SIGTERM or Ctrl+C; raises what loading the model raised, if it failed."""
    import uvicorn

    server: uvicorn.Server | None = None

    def stop():
        server.should_exit = True

    app = create_app(loader=lambda: load_service(options), request_timeout_s=options.request_timeout_s,
                     on_load_error=stop)
    config = uvicorn.Config(app, host=options.host, port=options.port, lifespan="on", access_log=False,
                            log_level="info")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with this handler in place
    # that re-raise is a no-op and the process exits 0 (the default handler would kill it with -SIGTERM).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    error = app.state.holder.error
    if error is not None:
        raise error
