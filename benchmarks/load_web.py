"""Load test of `lstmkit serve`: many concurrent API requests against a real uvicorn server, latency per endpoint.

The server runs in this process (a background thread, 127.0.0.1, a free port) with the given runs; the client
is httpx.AsyncClient keeping `--concurrency` requests in flight until `--requests` are answered. A sentiment
run gets predict and trace requests in turn; a language model gets trace and generate (`--generate-length`
tokens, timed to the end of the stream). Latency is from sending to the last byte; an error is any status
other than 200 or a stream without its final line. tests/test_web.py runs the same load on a tiny model.

Run: `python benchmarks/load_web.py RUN [RUN ...] [--requests 1000] [--concurrency 64] [--slots 4]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

REVIEWS = [
    "A wonderful film, moving from start to finish; the cast is superb.",
    "Two hours I will never get back. The plot is dull and the acting is wooden.",
    "Not bad, not great: the music carried it, but the ending was rushed.",
    "I laughed, I cried, and I went back to see it again the next day.",
    "The worst dialogue I have heard in years, saved only by the photography.",
    "An honest, quiet story about a family, told without any fuss. Loved it.",
]


@dataclass
class Outcome:
    endpoint: str
    seconds: float
    error: str | None  # None: a 200 with a complete answer


def plan(runs: list[dict[str, Any]], requests: int, prompts: dict[str, str], generate_length: int = 32,
         ) -> list[tuple[str, dict[str, Any]]]:
    """`requests` (path, body) pairs, cycling over the runs and, per run, over the endpoints its task has."""
    kinds: list[tuple[str, dict[str, Any]]] = []
    for run in runs:
        if run["task"] == "sentiment":
            kinds += [("/api/predict", {"run": run["name"], "texts": REVIEWS[:2]}),
                      ("/api/trace", {"run": run["name"]})]
        elif run["task"] == "lm":
            kinds += [("/api/trace", {"run": run["name"]}),
                      ("/api/generate", {"run": run["name"], "prompt": prompts[run["name"]],
                                         "length": generate_length, "temperature": 0.8})]
    if not kinds:
        raise SystemExit("no sentiment or language-model run to load")
    work = []
    for k in range(requests):
        path, body = kinds[k % len(kinds)]
        body = dict(body)
        if path == "/api/trace":
            body["text"] = REVIEWS[k % len(REVIEWS)]
        elif path == "/api/generate":
            body["seed"] = k
        work.append((path, body))
    return work


async def one(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Outcome:
    start = time.perf_counter()
    try:
        if path == "/api/generate":
            async with client.stream("POST", path, json=body) as response:
                lines = [line async for line in response.aiter_lines() if line]
            done = response.status_code == 200 and lines and json.loads(lines[-1]).get("done") is True
            error = None if done else f"HTTP {response.status_code}: {lines[-1] if lines else 'no lines'}"
        else:
            response = await client.post(path, json=body)
            error = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(path.removeprefix("/api/"), time.perf_counter() - start, error)


async def fire(base_url: str, work: list[tuple[str, dict[str, Any]]], concurrency: int) -> tuple[list[Outcome], float]:
    """Send `work` with at most `concurrency` requests in flight; the outcomes and the wall-clock seconds."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        async def bounded(path: str, body: dict[str, Any]) -> Outcome:
            async with gate:
                return await one(client, path, body)

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(bounded(path, body) for path, body in work))
    return list(outcomes), time.perf_counter() - start


def summary(outcomes: list[Outcome], seconds: float) -> list[dict[str, Any]]:
    """Per endpoint and overall: requests, errors, p50 / p99 / max latency in ms."""
    rows = []
    groups = sorted({o.endpoint for o in outcomes})
    for name in [*groups, "all"]:
        chosen = [o for o in outcomes if name in ("all", o.endpoint)]
        ms = np.array([o.seconds * 1000 for o in chosen])
        rows.append({"endpoint": name, "requests": len(chosen), "errors": sum(o.error is not None for o in chosen),
                     "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "max_ms": float(ms.max())})
    rows[-1]["per_second"] = len(outcomes) / seconds
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'endpoint':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for row in rows:
        lines.append(f"{row['endpoint']:<10} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8.1f} "
                     f"{row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}")
    lines.append(f"throughput: {rows[-1]['per_second']:.1f} requests/s")
    return "\n".join(lines)


def prompt_for(task: Any) -> str:
    """A prompt the language model can read: a review's characters (or words) that are in its vocabulary."""
    from lstmkit.data.text import tokenize

    known = [token for token in tokenize(REVIEWS[0], task.vocab.level) if token in task.vocab]
    if not known:
        raise SystemExit("no character or word of the sample text is in the language model's vocabulary")
    return ("" if task.vocab.level == "char" else " ").join(known[:12])


def main() -> None:
    from lstmkit.web.app import Limits, background_server, create_app

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (the client)")
    parser.add_argument("--slots", type=int, default=4, help="model calls at once (the server's --concurrency)")
    parser.add_argument("--generate-length", type=int, default=32)
    args = parser.parse_args()

    app = create_app(args.runs, Limits(concurrency=args.slots, timeout_s=120))
    served = app.state.runs
    prompts = {name: prompt_for(run.task) for name, run in served.items() if run.task.name == "lm"}
    work = plan([run.info() for run in served.values()], args.requests, prompts, args.generate_length)
    with background_server(app) as url:
        asyncio.run(fire(url, work[: min(20, len(work))], args.concurrency))  # warm-up
        outcomes, seconds = asyncio.run(fire(url, work, args.concurrency))
    print(f"# {', '.join(f'{name} ({run.task.name})' for name, run in served.items())}: {args.requests} requests, "
          f"{args.concurrency} in flight, {args.slots} model slots; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(summary(outcomes, seconds)))
    errors = [o.error for o in outcomes if o.error]
    if errors:
        print(f"first error: {errors[0]}")


if __name__ == "__main__":
    main()
