"""`nllb-neuronx serve` end to end: the real server in a subprocess on 127.0.0.1, talked to with httpx.

Three servers of one tiny shape share compiled artifacts (the first compiles, the others load): `server` (normal
limits; SIGTERM at the end), `overload` (--max-queue 4: 503 and the per-request line limit) and `slow` (a request
timeout of 0.3 s: 504). The tiny random model never emits EOS on these texts, so every line decodes all 63 steps
of the 64-position bucket: long enough for the test to look at a busy server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from nllb_neuronx.translator import Translator

SHAPE = ["--batch-size", "4", "--n-positions", "64", "--encoder-buckets", "16"]
TEXTS = ["Hello world.", "", "How are you?", "The cat sat on the mat.", "Bonjour le monde.", "Wie geht es dir?"]
BUSY = ["How are you?"] * 4       # fills the 4 slots for 63 decode steps (this random model never stops early)
LONG = 63                         # max_new_tokens that keeps BUSY lines decoding (the default is the checkpoint's 20)
STARTUP_S = 300    # the machine may be busy: every wait is bounded, generously


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, artifacts: str, log_path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        args = [sys.executable, "-m", "nllb_neuronx.cli", "serve", "--model", model, "--port", str(self.port),
                "--compiled-dir", artifacts, *SHAPE, *extra]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited: {open(self.log_path).read()[-3000:]}"
            try:
                if httpx.get(self.url + "/ready", timeout=10).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready in {STARTUP_S} s: {open(self.log_path).read()[-3000:]}")

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{name}{{{re.escape(want)}}} (\S+)$" if labels else rf"^{name} (\S+)$"
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    def wait_metric(self, name: str, predicate, timeout_s: float = 60, **labels) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.metric(name, **labels)
            if predicate(value):
                return value
            time.sleep(0.01)
        raise AssertionError(f"{name}{labels} stayed at {value} for {timeout_s} s")

    def busy_while(self, future, name: str = "nllb_active_slots", timeout_s: float = 60) -> bool:
        """Whether metric `name` went above 0 before `future` (a request to this server) finished."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not future.done():
            if self.metric(name) > 0:
                return True
            time.sleep(0.005)
        return False

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("serve_artifacts"))


@pytest.fixture(scope="module")
def servers(nllb_checkpoint, artifacts, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve_logs")
    started = {"server": Server(nllb_checkpoint[0], artifacts, logs / "server.log", "--max-queue", "64")}
    try:
        started["server"].wait_ready()                       # compiles into `artifacts`; the next two load them
        started["overload"] = Server(nllb_checkpoint[0], artifacts, logs / "overload.log", "--max-queue", "4")
        started["slow"] = Server(nllb_checkpoint[0], artifacts, logs / "slow.log", "--request-timeout", "0.3")
        yield started
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["server"]


@pytest.fixture(scope="module")
def translator(nllb_checkpoint, artifacts, servers):
    return Translator.from_pretrained(nllb_checkpoint[0], batch_size=4, n_positions=[64], encoder_buckets=[16],
                                      compiled_dir=artifacts)


def v1(server, timeout=120, **body):
    return httpx.post(server.url + "/v1/translate", json=body, timeout=timeout)


def test_results_equal_translator_under_concurrent_clients(server, translator):
    targets = ["fra_Latn", "deu_Latn", "spa_Latn", "fra_Latn", "deu_Latn", "spa_Latn"]
    expected_mixed = translator.translate(TEXTS, "eng_Latn", targets)
    expected_fra = translator.translate(TEXTS, "eng_Latn", "fra_Latn")

    def client(i: int):
        if i % 2:
            r = v1(server, texts=TEXTS, source="eng_Latn", target=targets)
            return r.status_code, r.json()["translations"], expected_mixed
        r = httpx.post(server.url + "/translate", json={"q": TEXTS, "source": "eng_Latn", "target": "fra_Latn",
                                                        "format": "text"}, timeout=120)
        return r.status_code, r.json()["translatedText"], expected_fra

    with ThreadPoolExecutor(4) as pool:
        for status, got, expected in pool.map(client, range(8)):
            assert status == 200 and got == expected
    one = httpx.post(server.url + "/translate", json={"q": TEXTS[2], "source": "eng_Latn", "target": "fra_Latn"},
                     timeout=120)
    assert one.json() == {"translatedText": expected_fra[2]}


def test_v1_usage_beams_and_languages(server, translator, nllb_checkpoint):
    r = v1(server, texts=TEXTS[:3], source="eng_Latn", target="fra_Latn", num_beams=2, max_new_tokens=10)
    assert r.status_code == 200
    body = r.json()
    assert body["translations"] == translator.translate(TEXTS[:3], "eng_Latn", "fra_Latn", num_beams=2,
                                                        max_new_tokens=10)
    tokenizer = nllb_checkpoint[2]
    tokenizer.src_lang = "eng_Latn"
    assert body["usage"]["input_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS[:3] if t)
    assert 0 < body["usage"]["output_tokens"] <= 2 * 9       # 2 lines, at most 10 new tokens after the language
    assert body["model"]
    languages = httpx.get(server.url + "/languages", timeout=30).json()
    codes = [entry["code"] for entry in languages]
    assert "fra_Latn" in codes and "eng_Latn" in codes and languages[0]["targets"] == codes
    assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready", timeout=30).status_code == 200


@pytest.mark.parametrize("path, body, message", [
    ("/v1/translate", b'{"texts": ["Hi"', "not valid JSON"),
    ("/v1/translate", b'["Hi"]', "the request body must be a JSON object, got a list"),
    ("/v1/translate", b'{"source": "eng_Latn", "target": "fra_Latn"}', "missing field 'texts'"),
    ("/v1/translate", b'{"texts": "Hi", "source": "eng_Latn", "target": "fra_Latn"}',
     "texts must be a list of strings, got a string"),
    ("/v1/translate", b'{"texts": ["Hi"], "source": "eng_Latn", "target": "fra_Latn", "num_beams": "2"}',
     "num_beams must be an integer"),
    ("/v1/translate", b'{"texts": ["Hi"], "source": "eng_Latn", "target": "fra_Latn", "beams": 2}',
     "unknown field(s) 'beams'"),
    ("/v1/translate", b'{"texts": ["Hi", "Yo"], "source": "eng_Latn", "target": ["fra_Latn"]}',
     "target has 1 codes for 2 texts"),
    ("/v1/translate", b'{"texts": ["Hi"], "source": "eng_Latn", "target": "fra_Latn", "max_new_tokens": 99}',
     "max_new_tokens must lie in [1, 64]"),
    ("/v1/translate", b'{"texts": ["Hi"], "source": "eng_Latn", "target": "fra_Latn", "sampling": {"top_p": 2}}',
     "sampling.top_p must lie in (0, 1]"),
    ("/translate", b'{"q": ["Hi"], "source": "english", "target": "fra_Latn"}', "source: unknown language code"),
    ("/translate", b'{"q": ["Hi"], "source": "eng_Latn", "target": "fra_Latm"}',
     "target: unknown language code 'fra_Latm'; did you mean fra_Latn"),
    ("/translate", b'{"q": "Hi", "source": "auto", "target": "fra_Latn"}', "not supported"),
    ("/translate", b'{"q": "Hi", "source": "eng_Latn", "target": "fra_Latn", "format": "html"}',
     "format 'html' is not supported"),
    ("/translate", b'{"q": [1], "source": "eng_Latn", "target": "fra_Latn"}', "q must be a list of strings"),
])
def test_bad_requests_get_400_naming_the_problem(server, path, body, message):
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_too_long_text_is_400_unless_split_long(server, translator):
    long_text = "The cat sat on the mat. " * 6
    r = v1(server, texts=["Hi.", long_text], source="eng_Latn", target="fra_Latn")
    assert r.status_code == 400
    assert re.search(r"text 1 has \d+ tokens, more than the largest encoder bucket \(16\); pass \"split_long\"",
                     r.json()["error"])
    r = v1(server, texts=["Hi.", long_text], source="eng_Latn", target="fra_Latn", split_long=True)
    assert r.status_code == 200
    assert r.json()["translations"] == translator.translate(["Hi.", long_text], "eng_Latn", "fra_Latn",
                                                            split_long=True)


def test_split_lines_and_seeded_sampling_as_the_translator(server, translator):
    """The server makes its engine requests with the Translator's own: a split line's sentences are rejoined as the
    Translator does (nothing between them for an unspaced script), and each line of a seeded request draws from its
    own seed derived from the request's, not all from the same one."""
    long_text = "The cat sat on the mat. " * 6
    r = v1(server, texts=[long_text, "Hi."], source="eng_Latn", target=["zho_Hans", "fra_Latn"], split_long=True)
    assert r.status_code == 200
    assert r.json()["translations"] == translator.translate([long_text, "Hi."], "eng_Latn", ["zho_Hans", "fra_Latn"],
                                                            split_long=True)
    texts = ["How are you?"] * 3
    r = v1(server, texts=texts, source="eng_Latn", target="fra_Latn", max_new_tokens=12,
           sampling={"temperature": 1.5, "top_k": 40, "seed": 7})
    assert r.status_code == 200
    expected = translator.translate(texts, "eng_Latn", "fra_Latn", max_new_tokens=12, do_sample=True,
                                    temperature=1.5, top_k=40, seed=7)
    assert r.json()["translations"] == expected and len(set(expected)) > 1


def test_client_disconnect_withdraws_its_lines(server):
    before = server.metric("nllb_lines_cancelled_total", reason="disconnect")
    with pytest.raises(httpx.ReadTimeout):
        v1(server, timeout=0.3, texts=BUSY * 16, source="eng_Latn", target="fra_Latn",
              max_new_tokens=LONG)
    server.wait_metric("nllb_lines_cancelled_total", lambda v: v > before, reason="disconnect")
    server.wait_metric("nllb_queue_depth", lambda v: v == 0)
    server.wait_metric("nllb_active_slots", lambda v: v == 0)
    assert v1(server, texts=["Hi."], source="eng_Latn", target="fra_Latn").status_code == 200


def test_metrics_count_requests_statuses_and_tokens(server):
    assert v1(server, texts=["Hello world."], source="eng_Latn", target="fra_Latn").status_code == 200
    assert v1(server, texts=["Hi"], source="eng_Latn", target="xxx_Yyyy").status_code == 400
    assert server.metric("nllb_requests_total", endpoint="/v1/translate", status="200") >= 1
    assert server.metric("nllb_requests_total", endpoint="/v1/translate", status="400") >= 1
    assert server.metric("nllb_request_latency_seconds_count", endpoint="/v1/translate") >= 2
    assert server.metric("nllb_generated_tokens_total") > 0 and server.metric("nllb_input_tokens_total") > 0
    assert server.metric("nllb_slots") == 4 and server.metric("nllb_ready") == 1


def test_full_queue_is_503_with_retry_after(servers):
    overload = servers["overload"].wait_ready()
    rejected = []
    with ThreadPoolExecutor(6) as pool:
        for _ in range(5):                          # a few rounds: the queue is full only while lines wait in it
            running = pool.submit(v1, overload, texts=BUSY, source="eng_Latn", target="fra_Latn",
                                   max_new_tokens=LONG)
            if not overload.busy_while(running):
                continue
            more = [pool.submit(v1, overload, texts=BUSY, source="eng_Latn", target="fra_Latn",
                                   max_new_tokens=LONG)] + [
                pool.submit(v1, overload, texts=["Hi."], source="eng_Latn", target="fra_Latn") for _ in range(4)]
            assert running.result().status_code == 200
            answers = [f.result() for f in more]
            assert {r.status_code for r in answers} <= {200, 503}
            rejected += [r for r in answers if r.status_code == 503]
            if rejected:
                break
    assert rejected, "no request found the queue full"
    assert all(r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"] for r in rejected)
    assert overload.metric("nllb_requests_total", endpoint="/v1/translate", status="503") == len(rejected)
    too_many = v1(overload, texts=BUSY + ["Yo."], source="eng_Latn", target="fra_Latn")
    assert too_many.status_code == 400 and "queues at most 4 per request" in too_many.json()["error"]


def test_past_the_request_timeout_is_504_and_frees_the_slots(servers):
    slow = servers["slow"].wait_ready()
    r = v1(slow, texts=BUSY * 16, source="eng_Latn", target="fra_Latn",
              max_new_tokens=LONG)    # 16 rounds of 63 steps
    assert r.status_code == 504 and "request timeout (0.3 s)" in r.json()["error"]
    assert slow.metric("nllb_lines_cancelled_total", reason="timeout") >= 1
    slow.wait_metric("nllb_queue_depth", lambda v: v == 0)
    slow.wait_metric("nllb_active_slots", lambda v: v == 0)
    assert slow.metric("nllb_requests_total", endpoint="/v1/translate", status="504") == 1


def test_sigterm_answers_the_requests_in_flight_and_exits_0(server):
    """Stops the main server: the last test to use it."""
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(v1, server, texts=BUSY * 16, source="eng_Latn", target="fra_Latn",
              max_new_tokens=LONG)  # 16 rounds
        assert server.busy_while(in_flight, "nllb_queue_depth"), "the request ended before the test saw it queued"
        server.process.send_signal(signal.SIGTERM)                   # lines decoding and lines queued
        answer = in_flight.result()
    assert answer.status_code == 200 and len(answer.json()["translations"]) == 64
    try:
        assert server.process.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 60 s after SIGTERM: {open(server.log_path).read()[-3000:]}")
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_a_missing_model_exits_2_with_the_reason(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    done = subprocess.run([sys.executable, "-m", "nllb_neuronx.cli", "serve", "--model", str(tmp_path / "none"),
                           "--port", str(_free_port())], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "nllb-neuronx serve: error: checkpoint directory" in done.stderr and "Traceback" not in done.stderr
