"""The same HTTP app under Ray Serve: `num_replicas` replicas, each a whole server (model, engine, app) on its own
NeuronCores, behind Ray's HTTP proxy.

    nllb-neuronx serve --ray --replicas 4 --tp 8 --model DIR          # starts or joins a Ray cluster

    from ray import serve
    serve.run(translation_app(ServeOptions(model=DIR, model_kwargs={"tp_degree": 8}), replicas=4), route_prefix="/")

Each replica asks for `neuron_cores` (default: its tp degree where the cluster has a `neuron_cores` resource, else
none); Ray sets NEURON_RT_VISIBLE_CORES for it, so replicas get disjoint cores. A replica loads and compiles in its
constructor (give a shared `compiled_dir` so that only the first one compiles), so Ray routes to it only when
ready. Ray's own queue in front of the replicas holds `max_queued_requests` requests; past it, Ray's proxy answers
503. Inside a replica, the engine's queue and the request timeout work as in the plain server.
"""

from __future__ import annotations

import signal
import threading

from nllb_neuronx.serve.app import create_app
from nllb_neuronx.serve.server import ServeOptions, load_service


def _asgi_app_builder(options: ServeOptions):
    def build():
        """Runs in each replica: the whole server, loaded and compiled before Ray routes to it."""
        return create_app(load_service(options), request_timeout_s=options.request_timeout_s)
    return build  # a plain function of no arguments: what serve.ingress calls at replica start


def neuron_cores_available() -> bool:
    import ray

    return ray.cluster_resources().get("neuron_cores", 0) > 0


def translation_app(options: ServeOptions, replicas: int = 1, neuron_cores: int | None = None,
                    max_ongoing_requests: int = 256, max_queued_requests: int | None = None):
    """A bound Ray Serve application. `neuron_cores`: per replica (None: the tp degree on a cluster with NeuronCores,
    0 elsewhere). `max_ongoing_requests`: concurrent requests per replica (many: the engine batches across them).
    `max_queued_requests`: Ray's queue in front of the replicas (None: the server's max_queue)."""
    from ray import serve

    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    if neuron_cores is None:
        neuron_cores = options.model_kwargs.get("tp_degree", 1) if neuron_cores_available() else 0
    actor_options = {"num_cpus": 1}
    if neuron_cores:
        actor_options["resources"] = {"neuron_cores": neuron_cores}  # whole cores only (Ray rejects fractions)

    @serve.deployment(name="nllb_neuronx", num_replicas=replicas, ray_actor_options=actor_options,
                      max_ongoing_requests=max_ongoing_requests,
                      max_queued_requests=options.max_queue if max_queued_requests is None else max_queued_requests)
    @serve.ingress(_asgi_app_builder(options))
    class NLLBTranslation:
        pass

    return NLLBTranslation.bind()


def serve_with_ray(options: ServeOptions, replicas: int = 1) -> None:
    """`nllb-neuronx serve --ray`: join the cluster at RAY_ADDRESS (or start a local one), serve on host:port until
    SIGTERM or Ctrl+C, then shut Serve down (replicas finish their requests in flight)."""
    import ray
    from ray import serve

    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(translation_app(options, replicas), name="nllb_neuronx", route_prefix="/")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        serve.shutdown()
        ray.shutdown()
