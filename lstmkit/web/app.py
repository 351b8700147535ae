"""`lstmkit serve`: trained runs behind a JSON API, and the page (static/) that shows their gates on your text.

Every run is loaded once, at startup, and only read afterwards, so requests share the models. Model calls
run in worker threads (the event loop stays free to accept and answer) behind a semaphore of
`Limits.concurrency` slots: a request that cannot get a slot within `Limits.timeout_s` is answered 503
instead of queueing forever, and one whose call outlasts the timeout is answered 504 (its thread finishes
in the background and only then frees its slot, so the limit on concurrent model work always holds).

Bad input is a 4xx with `{"detail": "<one line>"}`, whatever its cause: a pydantic validation error, the
limits here, or an `LstmkitError` from the model code (400, its own message).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import swagger_ui_bundle
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

import lstmkit
from lstmkit.ensemble import open_run
from lstmkit.errors import ConfigError, LstmkitError
from lstmkit.introspect import GATE_NAMES, trace_text
from lstmkit.sample import generate

STATIC_DIR = Path(__file__).resolve().parent / "static"
GATES = tuple(GATE_NAMES.values())  # input, forget, output, candidate, cell, hidden
TEXT_TASKS = ("sentiment", "lm")
log = logging.getLogger("lstmkit.web")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; everything above is refused with a message that names the limit."""

    max_chars: int = 5000  # characters per text (each text of a predict request, a trace's text, a prompt)
    max_tokens: int = 1000  # tokens one trace may read (its payload grows with tokens x units x gates)
    max_generate: int = 1000  # tokens one generate request may ask for
    timeout_s: float = 30.0  # seconds to wait for a model slot, and seconds one model call may take
    concurrency: int = 4  # model calls running at once; the others wait (up to timeout_s)
    max_texts: int = 64  # texts per predict request

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not value > 0:
                raise ConfigError(f"the server limit {item.name} must be above 0, got {value}")


# --- the runs ---------------------------------------------------------------------------------------------


@dataclass
class ServedRun:
    name: str
    task: Any
    model: torch.nn.Module

    def info(self) -> dict[str, Any]:
        lstm = _traced_lstm(self.model)
        vocab = getattr(self.task, "vocab", None)
        return {
            "name": self.name,
            "task": self.task.name,
            "level": getattr(vocab, "level", None),
            "num_layers": getattr(lstm, "num_layers", None),
            "hidden_size": getattr(lstm, "hidden_size", None),
            "directions": ["forward", "reverse"] if getattr(lstm, "bidirectional", False) else ["forward"],
            "labels": list(self.task.label_names) if self.task.name in ("sentiment", "speech") else None,
            "members": len(self.model.members) if hasattr(self.model, "members") else None,
        }


def _traced_lstm(model: torch.nn.Module) -> Any:
    """The LSTM whose gates a trace shows: the model's own, or an ensemble's first member's (see trace_text)."""
    members = getattr(model, "members", None)
    return getattr(members[0] if members is not None else model, "lstm", None)


def load_runs(run_dirs: Sequence[Path]) -> dict[str, ServedRun]:
    """Every run, named by its directory; a clash gets -2, -3, ... A bad directory raises open_run's error."""
    if not run_dirs:
        raise ConfigError("give at least one run directory to serve")
    served: dict[str, ServedRun] = {}
    for run_dir in run_dirs:
        path = Path(run_dir).expanduser()
        task, model = open_run(path)
        base = path.resolve().name or "run"
        name, k = base, 2
        while name in served:
            name, k = f"{base}-{k}", k + 1
        served[name] = ServedRun(name, task, model)  # open_run returns it in eval mode
    return served


def pick_run(runs: dict[str, ServedRun], name: str | None, tasks: tuple[str, ...], endpoint: str) -> ServedRun:
    """The run a request names (or the first one that fits the endpoint), with a 404/400 that says what exists."""
    wanted = " or ".join(tasks)
    fitting = [run.name for run in runs.values() if run.task.name in tasks]
    if name is None:
        if not fitting:
            served = ", ".join(f"{run.name} ({run.task.name})" for run in runs.values())
            raise HTTPException(400, f"{endpoint} needs a {wanted} run and none is served (runs: {served})")
        return runs[fitting[0]]
    if name not in runs:
        raise HTTPException(404, f"no run named {name!r}; the runs served are: {', '.join(runs)}")
    run = runs[name]
    if run.task.name not in tasks:
        others = f" (try {', '.join(fitting)})" if fitting else ""
        raise HTTPException(400, f"run {name!r} has task {run.task.name!r}; {endpoint} needs a {wanted} run{others}")
    return run


# --- model slots: bounded concurrency with a timeout ------------------------------------------------------


class ModelSlots:
    """At most `concurrency` model calls at once, each in a worker thread; waiting and running are both timed."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # One semaphore per event loop: an asyncio.Semaphore may only be awaited in one loop, and a test client
        # (or a second server) may run the same app in another.
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.limits.concurrency)
        return self._semaphores[loop]

    async def acquire(self) -> Callable[[], None]:
        """Take a slot (503 if none frees within the timeout); returns its release, which is safe to call twice."""
        semaphore = self._semaphore()
        try:
            await asyncio.wait_for(semaphore.acquire(), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the server is busy: all {self.limits.concurrency} model slots stayed taken "
                                     f"for {self.limits.timeout_s:g} s; try again shortly") from None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                semaphore.release()

        return release

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a worker thread under torch.inference_mode, holding a slot until the thread is done."""
        release = await self.acquire()
        future = asyncio.ensure_future(run_in_threadpool(_inference, fn, *args))

        def finished(done: asyncio.Future) -> None:
            release()
            if not done.cancelled():
                done.exception()  # a call that outlived its request: its failure is retrieved, not logged as lost

        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the model took longer than {self.limits.timeout_s:g} s (this server's limit); "
                                     "send a shorter text") from None


def _inference(fn: Callable[..., Any], *args: Any) -> Any:
    with torch.inference_mode():
        return fn(*args)


class SlotStreamingResponse(StreamingResponse):
    """A stream that frees its model slot when the response ends, however it ends (even if never iterated)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


# --- request and response models (what /docs shows) -------------------------------------------------------

RUN_FIELD = Field(None, description="The run's name (see GET /api/runs); default: the first run that fits.",
                  examples=["imdb"])
GateName = Literal[GATES]  # type: ignore[valid-type]  # the six names of GATE_NAMES, written once


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["A wonderful, moving film.", "Two hours I will never get back."]},
                     {"text": "A wonderful, moving film."}]})

    run: str | None = RUN_FIELD
    texts: list[str] | None = Field(None, min_length=1,
                                    description="Texts to classify (each at most the server's max_chars).")
    text: str | None = Field(None, description="One text to classify, instead of `texts` (as /api/trace takes it).")

    def all_texts(self) -> list[str]:
        """The texts of either form; a request with neither or both is a 422 that says what to send."""
        if (self.texts is None) == (self.text is None):
            which = "both" if self.text is not None else "neither"
            raise HTTPException(422, f'send "texts": ["...", ...] or, for one text, "text": "..." (this request has '
                                     f"{which})")
        return self.texts if self.texts is not None else [self.text]


class Prediction(BaseModel):
    text: str
    label: str = Field(description="The most likely label.")
    probability: float = Field(description="Its probability.")
    probabilities: dict[str, float] = Field(description="Every label's probability.")


class PredictResponse(BaseModel):
    run: str
    results: list[Prediction]


class TraceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "The plot was thin but the acting was superb."},
                     {"run": "shakespeare", "text": "ROMEO:\nBut soft", "layers": [1], "gates": ["cell", "hidden"]}]})

    run: str | None = RUN_FIELD
    text: str = Field(description="The text to read: a review for a sentiment run, any text for a language model.")
    layers: list[int] | None = Field(None, description="Only these layers (0 is the first); default: all.")
    gates: list[GateName] | None = Field(None, description="Only these gates; default: all six.")
    decimals: int = Field(4, ge=1, le=8, description="Digits kept after the point (fewer: a smaller payload).")


class LayerTrace(BaseModel):
    layer: int
    direction: Literal["forward", "reverse"]
    input: list[list[float]] | None = Field(None, description="[tokens][units] input gate, in (0, 1)")
    forget: list[list[float]] | None = Field(None, description="[tokens][units] forget gate, in (0, 1)")
    output: list[list[float]] | None = Field(None, description="[tokens][units] output gate, in (0, 1)")
    candidate: list[list[float]] | None = Field(None, description="[tokens][units] candidate cell, in (-1, 1)")
    cell: list[list[float]] | None = Field(None, description="[tokens][units] memory cell (unbounded)")
    hidden: list[list[float]] | None = Field(None, description="[tokens][units] hidden state, in (-1, 1)")


class TraceResponse(BaseModel):
    run: str
    task: str
    level: str = Field(description="'word' or 'char': what a token is.")
    tokens: list[str] = Field(description="The tokens the model read, in order.")
    unknown: list[bool] = Field(description="Per token: outside the vocabulary (the model read <unk>).")
    hidden_size: int
    num_layers: int
    directions: list[str]
    layers: list[LayerTrace] = Field(description="One entry per (layer, direction) asked for.")
    prediction: dict[str, Any] | None = Field(
        description="Sentiment: {label, probability, probabilities}; language model: {next: [{token, probability}]} "
                    "(the 5 most likely next tokens).")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"prompt": "ROMEO:\n", "length": 200, "temperature": 0.8, "seed": 1}]})

    run: str | None = RUN_FIELD
    prompt: str = Field(min_length=1, description="Text to continue; each of its characters (or words) must be in "
                                                  "the model's vocabulary.")
    length: int = Field(200, ge=1, description="Tokens to generate (at most the server's max_generate).")
    temperature: float = Field(1.0, gt=0, description="Above 1: more varied; below 1: more conservative.")
    top_k: int | None = Field(None, ge=1, description="Sample among the k most likely tokens only.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: the smallest set reaching p.")
    greedy: bool = Field(False, description="Always the most likely token (no sampling).")
    seed: int = Field(0, description="The same seed gives the same text.")


class RunInfo(BaseModel):
    name: str
    task: str = Field(description="'sentiment', 'lm', 'speech', 'sequences' or 'adding'.")
    level: str | None = Field(description="'word' or 'char' for runs that read text.")
    num_layers: int | None
    hidden_size: int | None
    directions: list[str]
    labels: list[str] | None = Field(description="A sentiment or speech run's label names.")
    members: int | None = Field(default=None, description="An ensemble's model count: its predictions average "
                                                          "them, its traces show the first one's gates.")


class Health(BaseModel):
    status: str
    runs: list[str]
    limits: dict[str, int | float]


# --- errors as one line -----------------------------------------------------------------------------------


def validation_message(errors: Sequence[Any]) -> str:
    """pydantic's error list as one readable line: the field, what is wrong, and the value when short."""
    parts = []
    for error in errors[:3]:
        kind = error.get("type", "")
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if kind == "json_invalid":
            reason = error.get("ctx", {}).get("error", "cannot parse it")
            position = error.get("loc", ())[-1]
            at = f" at character {position}" if isinstance(position, int) else ""
            return f"the request body is not valid JSON: {reason}{at}"
        if kind == "missing" and not where:
            return "the request needs a JSON body"
        if not where and kind in ("model_attributes_type", "dict_type", "model_type"):
            return "the request body must be a JSON object (with Content-Type: application/json)"
        message = "is required" if kind == "missing" else error.get("msg", "is invalid")
        value = error.get("input")
        if kind != "missing" and isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40:
            message += f" (got {value!r})"
        parts.append(f"{where}: {message}" if where else message)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def check_chars(text: str, what: str, limits: Limits) -> None:
    if len(text) > limits.max_chars:
        raise HTTPException(413, f"{what} has {len(text):,} characters, over this server's limit of "
                                 f"{limits.max_chars:,}; shorten it")


class RefuseHugeBodies:
    """ASGI middleware: a 413 for a Content-Length over `max_bytes`, before the body is read (plain ASGI, so that
    streamed responses pass through untouched)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse({"detail": f"the request body has {int(length):,} bytes, over this server's "
                                                   f"limit of {self.max_bytes:,}"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def ndjson(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, ensure_ascii=False) + "\n").encode()


# --- the app ----------------------------------------------------------------------------------------------


def create_app(run_dirs: Sequence[Path], limits: Limits | None = None) -> FastAPI:
    """The API and the page over `run_dirs`, all loaded now (a bad one raises its LstmkitError here)."""
    limits = limits or Limits()
    runs = load_runs(run_dirs)
    slots = ModelSlots(limits)
    app = FastAPI(
        title="lstmkit",
        version=lstmkit.__version__,
        description="Trained lstmkit runs: sentiment predictions, text generation, and every gate and memory cell "
                    "of the LSTM on a text you send. The page at / draws them.",
        docs_url=None,  # served below from the swagger-ui-bundle package: FastAPI's default loads it from a CDN
        redoc_url=None,
    )
    app.state.runs = runs
    app.state.limits = limits
    app.state.slots = slots
    # JSON may spend 6 bytes (\uXXXX) on a character; a body larger than any valid request is refused unread.
    app.add_middleware(RefuseHugeBodies, max_bytes=limits.max_chars * limits.max_texts * 6 + 65536)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(LstmkitError)
    async def user_error(request: Request, exc: LstmkitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so uvicorn's log gets the traceback once.
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """The OpenAPI docs, from files installed with the package: they work offline."""
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="lstmkit API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")

    @app.get("/api/health", response_model=Health, summary="Liveness, the runs served and the limits")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "runs": list(runs), "limits": asdict(limits)}

    @app.get("/api/runs", response_model=list[RunInfo], summary="The runs served")
    async def list_runs() -> list[dict[str, Any]]:
        return [run.info() for run in runs.values()]

    @app.post("/api/predict", response_model=PredictResponse, summary="Classify texts with a sentiment run",
              description='`{"texts": [...]}` or, for one text, `{"text": "..."}`; either way one result per text.',
              responses={400: {"description": "Not a sentiment run, or a text the model cannot read"},
                         404: {"description": "No run of that name"},
                         413: {"description": "Too many texts, or a text over max_chars"}})
    async def predict(body: PredictRequest) -> dict[str, Any]:
        texts = body.all_texts()
        run = pick_run(runs, body.run, ("sentiment",), "/api/predict")
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request, over this server's limit of "
                                     f"{limits.max_texts}; split them")
        for i, text in enumerate(texts):
            check_chars(text, f"text {i + 1}", limits)
        results = await slots.call(run.task.predict_texts, run.model, texts)
        return {"run": run.name, "results": results}

    @app.post("/api/trace", response_model=TraceResponse,
              summary="Every gate and memory cell of the LSTM on a text",
              description="Per token and unit: the gates input, forget, output (0..1), the candidate and hidden "
                          "state (-1..1) and the memory cell, for each layer and direction; plus the run's "
                          "prediction. Ask for some `layers` and `gates` only to get a smaller answer.",
              responses={400: {"description": "A run that does not read text, a layer it lacks, or an empty text"},
                         404: {"description": "No run of that name"},
                         413: {"description": "A text over max_chars"}})
    async def trace(body: TraceRequest) -> Response:
        run = pick_run(runs, body.run, TEXT_TASKS, "/api/trace")
        check_chars(body.text, "the text", limits)
        num_layers = _traced_lstm(run.model).num_layers
        wrong = sorted({layer for layer in body.layers or [] if not 0 <= layer < num_layers})
        if wrong:
            has = "only layer 0" if num_layers == 1 else f"layers 0 to {num_layers - 1}"
            raise HTTPException(400, f"run {run.name!r} has {has}; there is no layer {', '.join(map(str, wrong))}")

        def traced() -> bytes:
            text_trace = trace_text(run.task, run.model, body.text, max_tokens=limits.max_tokens)
            payload = {"run": run.name, **text_trace.to_json(body.decimals, layers=body.layers, gates=body.gates)}
            return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

        return Response(await slots.call(traced), media_type="application/json")

    @app.post("/api/generate", response_class=StreamingResponse, summary="Generate text with a language model",
              description="Streamed as NDJSON while it is produced: one line `{\"token\": \"...\"}` per token, then "
                          "`{\"done\": true, \"text\": prompt + generated}`. A line `{\"error\": \"...\"}` ends a "
                          "stream that had to stop (the server's time limit).",
              responses={200: {"content": {"application/x-ndjson": {"example": '{"token": "a"}\n{"done": true, '
                                                                               '"text": "ROMEO:\\na"}\n'}},
                               "description": "NDJSON lines"},
                         400: {"description": "Not a language-model run, a length over max_generate, or a prompt "
                                              "with tokens the model never saw"},
                         404: {"description": "No run of that name"},
                         503: {"description": "No model slot freed in time"}})
    async def generate_text(body: GenerateRequest) -> Response:
        run = pick_run(runs, body.run, ("lm",), "/api/generate")
        check_chars(body.prompt, "the prompt", limits)
        if body.length > limits.max_generate:
            raise HTTPException(400, f"length {body.length:,} is over this server's limit of {limits.max_generate:,} "
                                     "tokens per request")
        # Checks the arguments and the prompt before anything streams, so their errors are a plain 400.
        pieces = generate(run.model, run.task.vocab, body.prompt, body.length, temperature=body.temperature,
                          top_k=body.top_k, top_p=body.top_p, greedy=body.greedy, seed=body.seed)
        release = await slots.acquire()
        return SlotStreamingResponse(stream_pieces(pieces, body.prompt, limits.timeout_s, release), release,
                                     media_type="application/x-ndjson",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    from lstmkit.web.speech import add_speech_routes

    add_speech_routes(app, runs, slots, limits, pick_run)
    return app


async def stream_pieces(pieces: Iterator[str], prompt: str, timeout_s: float,
                        release: Callable[[], None]) -> AsyncIterator[bytes]:
    """Each token as one NDJSON line as soon as its worker-thread step returns; stops at the time limit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    produced: list[str] = []
    try:
        while True:
            if loop.time() > deadline:
                yield ndjson({"error": f"generation stopped after {timeout_s:g} s (this server's limit), "
                                       f"{len(produced)} tokens in; ask for fewer"})
                return
            piece = await run_in_threadpool(_inference, next, pieces, None)
            if piece is None:
                break
            produced.append(piece)
            yield ndjson({"token": piece})
        yield ndjson({"done": True, "text": prompt + "".join(produced)})
    except LstmkitError as exc:
        yield ndjson({"error": str(exc)})
    except Exception as exc:  # the status line is sent already: say so in the stream, keep the traceback in the log
        log.exception("generation failed")
        yield ndjson({"error": f"internal error ({type(exc).__name__}); the server log has the details"})
    finally:
        release()


# --- running it -------------------------------------------------------------------------------------------


def serve(run_dirs: Sequence[Path], host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          log_level: str = "info") -> None:
    """Load the runs and serve them until interrupted (127.0.0.1 unless told otherwise: only this machine)."""
    import uvicorn

    app = create_app(run_dirs, limits)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:  # uvicorn would log a traceback and exit; say it in one line instead
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port "
                              "(or --host)") from None
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """A real uvicorn server for `app` in a thread, on a free port; yields its base URL (tests, the load test)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lstmkit-web", daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > 30:
            sock.close()
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
