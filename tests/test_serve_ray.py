"""The app under Ray Serve on a local Ray cluster: two replicas, each on its own NeuronCore resource, through Ray's
HTTP proxy."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from nllb_neuronx.serve.server import ServeOptions
from nllb_neuronx.translator import Translator

ray = pytest.importorskip("ray")
SHAPE = dict(batch_size=4, n_positions=[16], encoder_buckets=[16])


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, resources={"neuron_cores": 2}, include_dashboard=False)
    try:
        yield
    finally:
        from ray import serve
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_app_through_ray(ray_cluster, nllb_checkpoint, tmp_path):
    from ray import serve

    from nllb_neuronx.serve.ray_serve import translation_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    compiled = str(tmp_path / "compiled")
    expected = Translator.from_pretrained(nllb_checkpoint[0], compiled_dir=compiled, **SHAPE).translate(
        ["Hello world.", "How are you?"], "eng_Latn", ["fra_Latn", "deu_Latn"], max_new_tokens=8)
    options = ServeOptions(model=nllb_checkpoint[0], model_kwargs=dict(SHAPE, compiled_dir=compiled), max_queue=8,
                           warmup="request")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(translation_app(options, replicas=2, neuron_cores=1), name="nllb", route_prefix="/")
    status = serve.status().applications["nllb"].deployments["nllb_neuronx"]
    assert status.status == "HEALTHY" and sum(status.replica_states.values()) == 2
    assert ray.available_resources().get("neuron_cores", 0) == 0          # one NeuronCore per replica, both taken
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/ready", timeout=30).json()["status"] == "ready"
    for _ in range(4):                                                      # the proxy spreads them over replicas
        r = httpx.post(url + "/v1/translate", json={"texts": ["Hello world.", "How are you?"], "source": "eng_Latn",
                                                    "target": ["fra_Latn", "deu_Latn"], "max_new_tokens": 8},
                       timeout=60)
        assert r.status_code == 200 and r.json()["translations"] == expected
    bad = httpx.post(url + "/translate", json={"q": "Hi", "source": "eng_Latn", "target": "fra_Latm"}, timeout=30)
    assert bad.status_code == 400 and "did you mean fra_Latn" in bad.json()["error"]
