"""`lstmkit serve` for speech runs: POST a recording, get its prediction, spectrogram and gates on one time axis.

The recording is the request body itself (the bytes of a WAV, FLAC or OGG file, as the page's file picker sends
it): no multipart parser is needed. It is written to a temporary file that soundfile reads, checked as `lstmkit
predict` checks a file, and traced by `SpeechTask.trace_recording`; errors name the uploaded file, not the
temporary one.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from lstmkit.errors import DataError
from lstmkit.tasks.speech import trace_json


def add_speech_routes(app: FastAPI, runs: dict[str, Any], slots: Any, limits: Any, pick_run: Any) -> None:
    @app.post("/api/speech", summary="Classify one recording with a speech run; its spectrogram and gates",
              description="The request body is the recording's bytes (WAV, FLAC or OGG). The answer: the prediction, "
                          "the mel spectrogram [frames][bands] (dB) and, per layer and direction, every gate and the "
                          "memory cell [frames][units], frame k at k × hop_seconds.",
              responses={400: {"description": "Not a speech run, or a body that is not a usable recording"},
                         404: {"description": "No run of that name"},
                         413: {"description": "A body over the server's size limit, or more frames than max_tokens"}})
    async def speech(request: Request, run: str | None = Query(None, description="The run's name; default: the first "
                                                                                "speech run."),
                     filename: str = Query("recording.wav", description="The file's name, for messages"),
                     decimals: int = Query(3, ge=1, le=8)) -> Response:
        served = pick_run(runs, run, ("speech",), "/api/speech")
        body = await request.body()
        if not body:
            raise HTTPException(400, "send the recording's bytes as the request body (a WAV, FLAC or OGG file)")
        shown = Path(filename).name[:100] or "recording.wav"  # in messages and the answer
        name = re.sub(r"[^\w.-]", "_", shown)  # on disk, in a folder of its own

        def traced() -> bytes:
            with tempfile.TemporaryDirectory(prefix="lstmkit-upload-") as scratch:
                path = Path(scratch) / name
                path.write_bytes(body)
                try:
                    result = served.task.trace_recording(served.model, path, max_frames=limits.max_tokens)
                except DataError as error:
                    raise DataError(str(error).replace(str(path), shown)) from None
            payload = {"run": served.name, "labels": served.task.label_names, **trace_json(result, decimals),
                       "file": shown}
            return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()

        return Response(await slots.call(traced), media_type="application/json")
