"""`lstmkit serve`: the JSON API in-process (answers, errors, limits, OpenAPI), then a real server (streaming, load)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_lm import small, write_text

from lstmkit import config as cfg
from lstmkit.errors import ConfigError, LstmkitError
from lstmkit.introspect import trace_text
from lstmkit.sample import generate
from lstmkit.tasks import default_config, open_run
from lstmkit.train import train_and_evaluate
from lstmkit.web import app as web
from lstmkit.web.app import Limits, background_server, create_app

with warnings.catch_warnings():  # starlette's test client warns that it wants `httpx2`; httpx is what we have
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

LOAD_WEB = Path(__file__).resolve().parents[1] / "benchmarks" / "load_web.py"
GATE_RANGES = {"input": (0, 1), "forget": (0, 1), "output": (0, 1), "candidate": (-1, 1), "hidden": (-1, 1)}
POSITIVE = ["great", "wonderful", "moving", "superb", "loved"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "hated"]
FILLER = ["the", "film", "plot", "actor", "scene", "was", "and", "a", "it", "of"]


# --- tiny runs, trained here in a few seconds ------------------------------------------------------------


@contextmanager
def one_thread():
    """Train the tiny runs on one thread: they gain nothing from two, and on a busy 2-core machine two threads
    contending with another process turn a 0.4 s training into 20 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_sentiment_run(root: Path, *overrides: str, name: str = "reviews") -> Path:
    """Two layers, bidirectional, 8 units: every axis of the gate view exists, and it trains in seconds."""
    rng = random.Random(0)
    lines = []
    for i in range(160):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if i % 2 else NEGATIVE))
        lines.append(json.dumps({"text": " ".join(words), "label": "positive" if i % 2 else "negative"}))
    data = root / "reviews.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = cfg.apply_overrides(default_config("sentiment"), [
        f"data.path={data}", "data.valid_size=40", "model.embedding_dim=8", "model.hidden_size=8",
        "model.num_layers=2", "model.bidirectional=true", "train.batch_size=16", "train.lr=0.01", "train.epochs=2",
        *overrides])
    run = root / name
    with one_thread():
        assert train_and_evaluate(config, run, quiet=True).status == "completed"
    return run


def make_char_run(root: Path) -> Path:
    config = small(write_text(root / "verse.txt", repeats=40), "model.embedding_dim=8", "model.hidden_size=16",
                   "train.epochs=2")
    run = root / "verse"
    with one_thread():
        assert train_and_evaluate(config, run, quiet=True).status == "completed"
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("web")
    return make_sentiment_run(root), make_char_run(root)


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(list(runs))) as test_client:
        yield test_client


def one_line_detail(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, detail
    assert "Traceback" not in detail
    return detail


# --- the API ---------------------------------------------------------------------------------------------


def test_runs_are_listed_with_their_shape(client, runs):
    listed = client.get("/api/runs").json()
    assert listed == [
        {"name": "reviews", "task": "sentiment", "level": "word", "num_layers": 2, "hidden_size": 8,
         "directions": ["forward", "reverse"], "labels": ["negative", "positive"], "members": None},
        {"name": "verse", "task": "lm", "level": "char", "num_layers": 1, "hidden_size": 16,
         "directions": ["forward"], "labels": None, "members": None},
    ]
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["runs"] == ["reviews", "verse"]
    assert health["limits"]["max_tokens"] == 1000


def test_runs_with_the_same_directory_name_get_a_suffix(runs):
    app = create_app([runs[0], runs[0], runs[0]])
    assert list(app.state.runs) == ["reviews", "reviews-2", "reviews-3"]


def test_bad_run_directories_and_limits_are_user_errors(tmp_path, runs):
    with pytest.raises(LstmkitError):
        create_app([runs[0], tmp_path / "missing"])
    with pytest.raises(ConfigError, match="at least one run directory"):
        create_app([])
    with pytest.raises(ConfigError, match="concurrency must be above 0"):
        Limits(concurrency=0)


def test_predict_equals_the_tasks_own_predictions(client, runs):
    task, model = open_run(runs[0])
    texts = ["a wonderful moving film", "dull and boring, I hated it", "the plot"]
    response = client.post("/api/predict", json={"texts": texts})  # the default run: the first sentiment one
    assert response.status_code == 200
    body = response.json()
    assert body["run"] == "reviews"
    expected = task.predict_texts(model, texts)
    for got, want in zip(body["results"], expected, strict=True):
        assert got["text"] == want["text"] and got["label"] == want["label"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-9)
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-9)


def test_predict_takes_one_text_as_text_or_texts(client):
    one = client.post("/api/predict", json={"text": "a wonderful moving film"})
    many = client.post("/api/predict", json={"texts": ["a wonderful moving film"]})
    assert one.status_code == many.status_code == 200
    assert one.json() == many.json() and len(one.json()["results"]) == 1


def test_label_names_reach_the_api_and_the_page(tmp_path):
    from test_classify import write_reviews

    config = cfg.apply_overrides(default_config("sentiment"), [
        f"data.path={write_reviews(tmp_path / 'reviews.jsonl', n=120)}", "data.label_names=negative,positive",
        "model.embedding_dim=8", "model.hidden_size=8", "train.epochs=1"])  # the data's labels are 0 and 1
    with one_thread():
        train_and_evaluate(config, tmp_path / "named", quiet=True)
    with TestClient(create_app([tmp_path / "named"])) as named:
        assert named.get("/api/runs").json()[0]["labels"] == ["negative", "positive"]
        predicted = named.post("/api/predict", json={"text": "a superb film"}).json()["results"][0]
        assert predicted["label"] in ("negative", "positive")
        assert set(predicted["probabilities"]) == {"negative", "positive"}
        # The page's prediction box shows the trace's label and a bar per entry of its probabilities.
        traced = named.post("/api/trace", json={"text": "a superb film"}).json()["prediction"]
        assert traced["label"] == predicted["label"] and set(traced["probabilities"]) == {"negative", "positive"}
        page = named.get("/static/app.js").text
        assert "label.textContent = p.label" in page and "Object.entries(p.probabilities)" in page


def test_trace_has_every_gate_per_token_and_unit(client, runs):
    text = "the plot was dull but the actor was superb"
    trace = client.post("/api/trace", json={"run": "reviews", "text": text}).json()
    T, H = len(trace["tokens"]), trace["hidden_size"]
    assert trace["run"] == "reviews" and trace["tokens"] == text.split() and H == 8
    assert trace["num_layers"] == 2 and trace["directions"] == ["forward", "reverse"]
    assert [(e["layer"], e["direction"]) for e in trace["layers"]] == [
        (0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")]
    for entry in trace["layers"]:
        for gate in ["input", "forget", "output", "candidate", "cell", "hidden"]:
            values = np.array(entry[gate])
            assert values.shape == (T, H), (entry["layer"], entry["direction"], gate)
            if gate in GATE_RANGES:
                low, high = GATE_RANGES[gate]
                assert low <= values.min() and values.max() <= high, gate
        # h = o * tanh(c), to the 4 decimals the answer keeps
        np.testing.assert_allclose(entry["hidden"], np.array(entry["output"]) * np.tanh(entry["cell"]), atol=2e-4)

    task, model = open_run(runs[0])
    predicted = task.predict_texts(model, [text])[0]
    assert trace["prediction"]["label"] == predicted["label"]
    assert trace["prediction"]["probability"] == pytest.approx(predicted["probability"], abs=1e-5)
    # Unfiltered, the answer is the library's own TextTrace.to_json (the forward direction listed first).
    own = trace_text(task, model, text).to_json()
    assert {key: value for key, value in trace.items() if key not in ("run", "directions")} == {
        key: value for key, value in own.items() if key != "directions"}
    assert set(own["directions"]) == set(trace["directions"])


def test_trace_of_a_language_model_shows_the_next_tokens(client):
    trace = client.post("/api/trace", json={"run": "verse", "text": "the cat"}).json()
    assert trace["level"] == "char" and trace["tokens"] == list("the cat")
    assert np.array(trace["layers"][0]["cell"]).shape == (7, 16)
    nexts = trace["prediction"]["next"]
    assert len(nexts) == 5 and all(0 < n["probability"] <= 1 for n in nexts)
    assert [n["probability"] for n in nexts] == sorted((n["probability"] for n in nexts), reverse=True)


def test_a_client_can_ask_for_some_layers_and_gates(client):
    full = client.post("/api/trace", json={"run": "reviews", "text": "a superb film"})
    part = client.post("/api/trace", json={"run": "reviews", "text": "a superb film", "layers": [1],
                                           "gates": ["cell", "forget"], "decimals": 2})
    assert part.status_code == 200 and len(part.content) < len(full.content) / 4
    trace = part.json()
    assert trace["num_layers"] == 2 and trace["directions"] == ["forward", "reverse"]  # still the whole model
    assert [(e["layer"], e["direction"]) for e in trace["layers"]] == [(1, "forward"), (1, "reverse")]
    assert all(set(e) == {"layer", "direction", "cell", "forget"} for e in trace["layers"])
    whole = full.json()["layers"][2]["forget"]
    np.testing.assert_allclose(trace["layers"][0]["forget"], whole, atol=0.005 + 1e-9)


def ndjson_lines(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_generate_streams_the_seeded_text_of_lstmkit_sample(client, runs):
    request = {"run": "verse", "prompt": "the ", "length": 40, "temperature": 1.5, "seed": 3}
    lines = ndjson_lines(client.post("/api/generate", json=request))
    pieces = [line["token"] for line in lines[:-1]]
    assert len(pieces) == 40 and lines[-1] == {"done": True, "text": "the " + "".join(pieces)}
    task, model = open_run(runs[1])
    assert pieces == list(generate(model, task.vocab, "the ", 40, temperature=1.5, seed=3))
    assert ndjson_lines(client.post("/api/generate", json=request)) == lines  # same seed, same text
    other = ndjson_lines(client.post("/api/generate", json={**request, "seed": 4}))
    assert other[-1]["text"] != lines[-1]["text"]
    greedy = ndjson_lines(client.post("/api/generate", json={"prompt": "the dog", "length": 8, "greedy": True}))
    assert greedy[-1]["text"] == "the dog" + "".join(generate(model, task.vocab, "the dog", 8, greedy=True))


BAD_REQUESTS = [
    # (path, JSON body or raw bytes, status, words the one-line detail must contain)
    ("/api/trace", {"text": "x" * 5001}, 413, ["5,001 characters", "5,000"]),
    ("/api/predict", {"texts": ["fine", "y" * 6000]}, 413, ["text 2", "5,000"]),
    ("/api/generate", {"prompt": "t" * 5001, "length": 5}, 413, ["prompt", "5,000"]),
    ("/api/trace", {"text": ""}, 400, ["no words"]),
    ("/api/trace", {"run": "verse", "text": ""}, 400, ["empty"]),
    ("/api/predict", {"texts": ["   "]}, 400, ["no words"]),
    ("/api/predict", {"texts": []}, 422, ["texts"]),
    ("/api/predict", b'{"texts": ["a", ', 422, ["not valid JSON"]),
    ("/api/predict", b"", 422, ["JSON body"]),
    ("/api/predict", b"[1, 2]", 422, ["JSON object"]),
    ("/api/predict", {"texts": [1]}, 422, ["texts.0", "string"]),
    ("/api/predict", {}, 422, ['send "texts": ["...", ...] or, for one text, "text": "..."', "neither"]),
    ("/api/predict", {"text": "a", "texts": ["b"]}, 422, ['"texts"', "both"]),
    ("/api/predict", {"txt": "a"}, 422, ["txt: Extra inputs"]),
    ("/api/predict", {"run": "nope", "texts": ["a"]}, 404, ["'nope'", "reviews, verse"]),
    ("/api/trace", {"run": "nope", "text": "a"}, 404, ["reviews, verse"]),
    ("/api/predict", {"run": "verse", "texts": ["a"]}, 400, ["'lm'", "sentiment run", "reviews"]),
    ("/api/generate", {"run": "reviews", "prompt": "a", "length": 3}, 400, ["'sentiment'", "lm run"]),
    ("/api/predict", {"texts": ["a"] * 65}, 413, ["65 texts", "64"]),
    ("/api/generate", {"prompt": "the", "length": 1001}, 400, ["1,001", "1,000"]),
    ("/api/generate", {"prompt": "the", "length": 0}, 422, ["length", "greater than or equal to 1"]),
    ("/api/generate", {"prompt": "the", "length": 5, "temperature": 0}, 422, ["temperature", "greater than 0"]),
    ("/api/generate", {"prompt": "the", "length": 5, "temperature": -1}, 422, ["temperature"]),
    ("/api/generate", {"prompt": "the", "length": 5, "top_p": 1.5}, 422, ["top_p"]),
    ("/api/generate", {"prompt": "QZ the", "length": 5}, 400, ["never saw", "'Q', 'Z'"]),
    ("/api/generate", {"prompt": "", "length": 5}, 422, ["prompt"]),
    ("/api/trace", {"text": "a", "layers": [2, 5]}, 400, ["layers 0 to 1", "no layer 2, 5"]),
    ("/api/trace", {"text": "a", "gates": ["memory"]}, 422, ["gates.0"]),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_REQUESTS,
                         ids=[f"{path[5:]}-{status}-{k}" for k, (path, _, status, _) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_with_one_clear_line(client, path, body, status, words):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    detail = one_line_detail(response)
    for word in words:
        assert word in detail, detail


def test_a_trace_over_the_token_limit_and_a_huge_body_are_refused(runs):
    with TestClient(create_app(list(runs), Limits(max_tokens=5, max_chars=100, max_texts=2))) as small:
        response = small.post("/api/trace", json={"run": "verse", "text": "the cat sat"})
        assert response.status_code == 400 and "11 tokens, over the limit of 5" in one_line_detail(response)
        response = small.post("/api/predict", content=b'{"texts": ["' + b"a" * 10**6 + b'"]}',
                              headers={"content-type": "application/json"})
        assert response.status_code == 413 and "bytes, over this server's limit" in one_line_detail(response)


def test_a_busy_server_says_so_instead_of_queueing_forever(runs):
    """One slot: a call that outlasts the timeout is a 504, and a request that finds the slot taken is a 503."""
    app = create_app(list(runs), Limits(concurrency=1, timeout_s=0.3))
    started, release = threading.Event(), threading.Event()
    task = app.state.runs["reviews"].task
    real = task.predict_texts

    def blocking(model, texts):
        started.set()
        release.wait(10)
        return real(model, texts)

    task.predict_texts = blocking
    answers = {}
    with TestClient(app) as test_client:
        slow = threading.Thread(target=lambda: answers.setdefault(
            "slow", test_client.post("/api/predict", json={"texts": ["a superb film"]})))
        slow.start()
        assert started.wait(10)
        waiting = test_client.post("/api/trace", json={"text": "a superb film"})  # the slot is still taken
        slow.join(10)
        release.set()
        assert waiting.status_code == 503, waiting.text
        assert "busy" in one_line_detail(waiting) and "1 model slots" in one_line_detail(waiting)
        assert answers["slow"].status_code == 504 and "longer than 0.3 s" in one_line_detail(answers["slow"])
        deadline = time.monotonic() + 10
        while True:  # the slot frees once the slow thread is done
            response = test_client.post("/api/trace", json={"text": "a superb film"})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
        assert response.status_code == 200


def test_openapi_documents_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/runs", "/api/predict", "/api/trace", "/api/generate", "/api/health"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for name in ["PredictRequest", "TraceRequest", "GenerateRequest"]:
        assert components[name].get("examples"), name
        assert all("description" in prop for key, prop in components[name]["properties"].items()), name
    assert "application/x-ndjson" in schema["paths"]["/api/generate"]["post"]["responses"]["200"]["content"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text  # offline: Swagger UI comes with the package
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ["run-select", "text-input", "submit", "prediction", "heatmap", "heatmap-info", "layer-select",
                    "gate-select", "prompt-input", "generate-button", "generated-text", "error"]:
        assert f'id="{element}"' in page.text, element
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for name in ["app.js", "style.css"]:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and len(response.content) > 1000
        assert "https://" not in response.text


# --- a real server ----------------------------------------------------------------------------------------


def test_generated_tokens_reach_the_client_while_generation_goes_on(runs, monkeypatch):
    """The second token is held back until the client has read the first: a buffered stream would never get it."""
    first_line_read = threading.Event()
    seen_in_time = []

    def held_back(*args, **kwargs):
        pieces = generate(*args, **kwargs)

        def gated():
            for k, piece in enumerate(pieces):
                if k == 1:
                    seen_in_time.append(first_line_read.wait(10))
                yield piece

        return gated()

    monkeypatch.setattr(web, "generate", held_back)
    request = {"prompt": "the ", "length": 5, "seed": 1}
    with (background_server(create_app(list(runs))) as url, httpx.Client(base_url=url, timeout=30) as http,
          http.stream("POST", "/api/generate", json=request) as response):
        assert response.status_code == 200
        lines = []
        for line in response.iter_lines():
            lines.append(json.loads(line))
            first_line_read.set()
    assert seen_in_time == [True]
    assert len(lines) == 6 and lines[-1]["done"]


def load_web():
    spec = importlib.util.spec_from_file_location("load_web", LOAD_WEB)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_200_concurrent_requests_all_succeed(runs, capsys):
    """A mix of predict, trace and generate, all 200 sent at once; the latency is printed, never asserted."""
    load = load_web()
    app = create_app(list(runs), Limits(timeout_s=60))
    prompts = {"verse": "the cat"}
    work = load.plan([run.info() for run in app.state.runs.values()], 240, prompts, generate_length=16)
    with background_server(app) as url:
        outcomes, seconds = asyncio.run(load.fire(url, work, concurrency=len(work)))
    errors = [o.error for o in outcomes if o.error]
    assert not errors, errors[:3]
    assert len(outcomes) == 240
    with capsys.disabled():
        print(f"\nload test: {len(work)} concurrent requests in {seconds:.2f} s\n"
              + load.table(load.summary(outcomes, seconds)))


def test_the_serve_command_refuses_a_busy_port_and_a_bad_run_in_one_line(runs, tmp_path):
    import socket

    from click.testing import CliRunner

    from lstmkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(runs[0]), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output, result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_page_traces_a_variant_run_with_f_as_one_minus_i(tmp_path):
    """A run trained with coupled gates and peepholes (model.lstm keys) is served and traced: the forget gate the
    page shows is 1 - i (CIFG has no f weights), and h = o tanh(c) still."""
    run = make_sentiment_run(tmp_path, "model.lstm.coupled_gates=true", "model.lstm.peephole=true",
                             "model.lstm.cell_clip=3", "model.num_layers=1", "train.epochs=1", name="cifg")
    with TestClient(create_app([run])) as variant:
        trace = variant.post("/api/trace", json={"text": "the actor was superb"}).json()
    for entry in trace["layers"]:
        np.testing.assert_allclose(entry["forget"], 1 - np.array(entry["input"]), atol=2e-4)
        np.testing.assert_allclose(entry["hidden"], np.array(entry["output"]) * np.tanh(entry["cell"]), atol=2e-4)
        assert np.abs(entry["cell"]).max() <= 3.0
