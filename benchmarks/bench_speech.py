"""Speed of the speech task: whole-dataset feature extraction, and a warm predict of one 1-second recording.

    python benchmarks/bench_speech.py --run runs/fsdd [--data ../shared/data/fsdd/recordings] [--repeats 50]

Extraction: every recording read, resampled to the run's rate and turned into its frames, from scratch (no cache).
Predict: `SpeechTask.predict_files` on one file of about 1 s (read, features, the LSTM, the softmax), after one
call to warm up; the median and the 90th percentile of --repeats calls. Validated before it is timed: the
prediction is the same on every call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile

from lstmkit.ensemble import open_run
from lstmkit.tasks import load_run_config
from lstmkit.tasks.speech import SpeechTask

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_speech_1s.wav"))
    args = parser.parse_args()

    config = load_run_config(args.run)
    config.data.path = str(args.data)
    started = time.perf_counter()
    task = SpeechTask(config)  # no cache_dir: every file is read and its features computed
    frames = task.frames()
    extraction = time.perf_counter() - started
    seconds = sum(soundfile.info(str(path)).duration for path in task.files)
    print(f"feature extraction: {len(frames):,} recordings ({seconds:,.0f} s of audio) in {extraction:.2f} s")

    # One second of speech: the first recordings of the data, joined and cut to exactly 1 s at their own rate.
    pieces, rate = [], None
    for path in sorted(args.data.glob("*.wav"))[:10]:
        samples, rate = soundfile.read(str(path), dtype="float32")
        pieces.append(samples)
    one_second = np.concatenate(pieces)[:rate]
    soundfile.write(str(args.scratch), one_second, rate, subtype="PCM_16")

    task, model = open_run(args.run)
    first = task.predict_files(model, [str(args.scratch)])[0]
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = task.predict_files(model, [str(args.scratch)])[0]
        times.append(time.perf_counter() - started)
        assert result["label"] == first["label"] and abs(result["probability"] - first["probability"]) < 1e-6
    times.sort()
    print(f"warm predict of a 1.00 s recording: median {1000 * statistics.median(times):.1f} ms, "
          f"p90 {1000 * times[int(0.9 * len(times))]:.1f} ms over {args.repeats} calls")


if __name__ == "__main__":
    main()
