"""The speech task on recordings the tests make: tones, sweeps and noise bursts of different lengths and rates.

Reading and resampling against the signal written, labels from folders, file names and lists, the features against
librosa's own computation, training to high accuracy on a separable task, resume bit-identical (and from the
feature cache), predict / evaluate / inspect through the CLI, and one clear line for every bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner
from conftest import assert_close, batches_drawn, float32_tolerance

from lstmkit import ensemble, runs
from lstmkit.cli import main
from lstmkit.data import audio
from lstmkit.tasks import get_task, load_run_config, requested_config
from lstmkit.tasks.speech import CACHE_FILE, FEATURES_FILE, SpeechTask
from lstmkit.train import config_for_resume, train_and_evaluate

RATES = (8000, 11025, 16000)
CLASSES = ("low", "high", "sweep")


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def sweep(f0: float, f1: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))  # instantaneous frequency f0 -> f1
    return (0.5 * np.sin(phase)).astype(np.float32)


def example(label: str, k: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One recording of class `label`: a low tone, a high tone, or an upward sweep, over a noise burst, at one of
    three rates and 0.15-0.45 s long, at a level that varies tenfold."""
    rate, seconds = RATES[k % len(RATES)], 0.15 + 0.3 * rng.random()
    signal = {"low": lambda: tone(300 + 50 * rng.random(), seconds, rate),
              "high": lambda: tone(2500 + 300 * rng.random(), seconds, rate),
              "sweep": lambda: sweep(400, 3000, seconds, rate)}[label]()
    noise = 0.05 * rng.standard_normal(len(signal)).astype(np.float32)
    return (signal + noise) * (0.1 + 0.9 * rng.random()), rate


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def make_recordings(root: Path, per_class: int = 14, layout: str = "folder", seed: int = 0) -> Path:
    """root/<label>/<label>_<k>.wav (folder layout) or root/<label>_<speaker>_<k>.wav (FSDD's layout)."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        for k in range(per_class):
            samples, rate = example(label, k, rng)
            name = f"{label}/{label}_{k}.wav" if layout == "folder" else f"{label}_spk{k % 2}_{k}.wav"
            write_wav(root / name, samples, rate)
    return root


SMALL = ["data.sample_rate=8000", "data.n_mels=16", "model.hidden_size=12", "train.batch_size=8", "train.lr=0.02",
         "train.epochs=6", "model.pooling=mean", "data.valid_size=0.25"]


def speech_config(data: Path, *extra: str):
    return requested_config("speech", (), [*SMALL, *extra], {"data.path": str(data)}).config


def make_speech_run(root: Path, *extra: str, name: str = "speech") -> Path:
    """A trained speech run on generated recordings (seconds on 2 cores)."""
    data = make_recordings(root / f"{name}-data")
    run = root / name
    assert train_and_evaluate(speech_config(data, *extra), run, quiet=True).status == "completed"
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    return make_speech_run(root, "data.normalize=train")


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- reading and resampling -------------------------------------------------------------------------------


def test_read_gives_the_samples_written_and_mixes_stereo_down(tmp_path):
    samples = tone(440, 0.3, 22050)
    read, rate = audio.read_audio(write_wav(tmp_path / "a.wav", samples, 22050, "FLOAT"), 30)
    assert rate == 22050 and read.dtype == np.float32
    np.testing.assert_array_equal(read, samples)
    pcm, _ = audio.read_audio(write_wav(tmp_path / "b.flac", samples, 22050, "PCM_16"), 30)
    assert np.abs(pcm - samples).max() <= 1 / 32768  # 16-bit quantisation, nothing else
    stereo = np.stack([samples, -0.5 * samples], axis=1)
    mixed, _ = audio.read_audio(write_wav(tmp_path / "c.wav", stereo, 22050, "FLOAT"), 30)
    np.testing.assert_allclose(mixed, 0.25 * samples, atol=1e-7)


@pytest.mark.parametrize(("rate", "target"), [(44100, 8000), (11025, 16000), (16000, 8000)])
def test_resampling_gives_the_same_tone_at_the_new_rate(tmp_path, rate, target):
    freq, seconds = 1000.0, 0.5
    written = tone(freq, seconds, rate)
    resampled = audio.load_waveform(write_wav(tmp_path / "t.wav", written, rate, "FLOAT"), target, 30)
    assert abs(len(resampled) - len(written) * target / rate) < 1
    expected = tone(freq, len(resampled) / target, target)
    middle = slice(target // 20, -target // 20)  # away from the ends, where the filter sees the edge
    assert np.abs(resampled[middle] - expected[middle]).max() < 1e-3  # soxr HQ: stop band below -100 dB


# --- labels and parts -------------------------------------------------------------------------------------


def test_labels_from_folders_file_names_and_the_held_out_lists(tmp_path):
    folders = make_recordings(tmp_path / "folders", per_class=4)
    (folders / "low" / "notes.txt").write_text("not a recording")  # other files are not recordings: ignored
    write_wav(folders / "_background_noise_" / "hum.wav", tone(50, 1.0, 8000), 8000)  # Speech Commands' noise
    (folders / "validation_list.txt").write_text("low/low_0.wav\nhigh/high_0.wav\nsweep/sweep_0.wav\n")
    (folders / "testing_list.txt").write_text("low/low_1.wav\nhigh/high_1.wav\n")
    task = get_task("speech")(speech_config(folders))
    assert task.label_names == ["high", "low", "sweep"]
    names = {part: sorted(task.files[i].name for i in indices) for part, indices in task.parts.items()}
    assert names["valid"] == ["high_0.wav", "low_0.wav", "sweep_0.wav"]
    assert names["test"] == ["high_1.wav", "low_1.wav"]
    assert len(names["train"]) == 12 - 5 and all("hum" not in n for n in names["train"])
    assert all(task.label_names[task.labels[i]] == task.files[i].parent.name for i in range(len(task.files)))

    flat = make_recordings(tmp_path / "flat", per_class=4, layout="filename")
    task = get_task("speech")(speech_config(flat, "data.label_from=filename", "data.test_match=_spk1_"))
    assert task.label_names == ["high", "low", "sweep"]
    assert all(task.label_names[task.labels[i]] == task.files[i].name.split("_")[0] for i in range(len(task.files)))
    assert {task.files[i].name.split("_")[1] for i in task.parts["test"]} == {"spk1"}
    assert len(task.parts["test"]) == 6 and len(task.parts["valid"]) + len(task.parts["train"]) == 6


# --- features against librosa -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    audio.FeatureSpec(8000),
    audio.FeatureSpec(16000, kind="mfcc", n_mfcc=20, deltas=2, fmin=60, fmax=7000),
    audio.FeatureSpec(11025, n_mels=64, deltas=1, win_ms=32, hop_ms=12),
], ids=["logmel-8k", "mfcc-dd-16k", "logmel-d-11k"])
def test_features_match_librosas_own_computation(spec):
    librosa = pytest.importorskip("librosa", reason="librosa (a dev dependency) checks the features")
    rng = np.random.default_rng(1)
    waveform = (sweep(200, 3000, 0.37, spec.sample_rate) + 0.1 * rng.standard_normal(round(0.37 * spec.sample_rate))
                ).astype(np.float32)
    fmax = spec.fmax or spec.sample_rate / 2
    bank = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=fmax,
                               dtype=np.float64)
    assert_close(audio.mel_filter_bank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, fmax), bank, "mel bank")
    power = librosa.feature.melspectrogram(y=waveform.astype(np.float64), sr=spec.sample_rate, n_fft=spec.n_fft,
                                           hop_length=spec.hop_length, win_length=spec.win_length, window="hann",
                                           center=True, pad_mode="constant", power=2.0, n_mels=spec.n_mels,
                                           fmin=spec.fmin, fmax=fmax)
    expected = librosa.power_to_db(power, ref=1.0, amin=audio.AMIN, top_db=None)
    if spec.kind == "mfcc":
        expected = librosa.feature.mfcc(S=expected, n_mfcc=spec.n_mfcc, dct_type=2, norm="ortho")
    parts = [expected]
    for _ in range(spec.deltas):  # HTK's regression Δ over ±2 frames is librosa's degree-1 Savitzky-Golay slope
        parts.append(librosa.feature.delta(parts[-1], width=5, order=1, mode="nearest"))
    ours = audio.FeatureExtractor(spec)(waveform).numpy().T
    assert ours.shape == (spec.size, 1 + len(waveform) // spec.hop_length)
    # float32 power sums n_fft products per bin; dB turns its relative error into an absolute one (10/ln 10 per
    # unit); the DCT and Δ sum at most n_mels more such values. Measured against the largest |value| as assert_close.
    tolerance = float32_tolerance(spec.n_fft + spec.n_mels)
    for k, part in enumerate(parts):
        block = ours[k * len(part):(k + 1) * len(part)]
        scale = np.abs(parts[0]).max() / np.abs(part).max()  # Δ is small: its error is the base's
        assert_close(block, part, f"features block {k} ({spec.kind})", tolerance=tolerance * max(1.0, scale) * 10)


def test_per_file_and_training_set_normalisation():
    frames = torch.randn(50, 6) * torch.tensor([1, 2, 3, 4, 5, 6.0]) + 7
    normalised = audio.per_file_normalised(frames)
    assert_close(normalised.mean(0), torch.zeros(6), "per-file mean", tolerance=1e-5)
    assert_close(normalised.std(0, unbiased=False), torch.ones(6), "per-file std", tolerance=1e-5)
    stats = audio.FeatureStats.of([frames[:20], frames[20:]])
    assert_close(stats.apply(frames), normalised, "training-set statistics of the same frames")
    again = audio.FeatureStats.from_json(json.loads(json.dumps(stats.to_json())), 6, "test")
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.std, stats.std)


def test_specaugment_masks_the_same_bands_in_every_delta_block(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    task = get_task("speech")(speech_config(data, "data.deltas=2", "data.freq_masks=1", "data.freq_mask_bands=5",
                                            "data.time_masks=1", "data.time_mask_frames=4"))
    frames = torch.randn(30, 48) + 10  # no zeros of its own
    torch.manual_seed(3)
    masked = task.masked(frames)
    zero = (masked == 0).reshape(30, 3, 16)
    bands = zero.all(dim=0)  # [3, 16]: bands masked over every frame
    assert torch.equal(bands[0], bands[1]) and torch.equal(bands[0], bands[2])
    assert 0 < int(bands[0].sum()) <= 5 or bool(zero.all(dim=(1, 2)).any())  # a band mask, or a time mask
    kept = ~zero.reshape(30, 48)
    assert torch.equal(masked[kept], frames[kept])


def test_speed_and_vocal_tract_perturbation_move_time_and_bands_by_the_drawn_factors(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    frames = torch.zeros(40, 32)
    frames[:, 10] = 1.0  # one band lit in the base block
    frames[:, 16 + 10] = 2.0  # and the same band in the Δ block
    task = get_task("speech")(speech_config(data, "data.n_mels=16", "data.deltas=1", "data.stretch=0.3",
                                            "data.warp=0.2"))
    torch.manual_seed(5)
    draws = torch.rand(2)
    factor, alpha = 1 + 0.3 * (2 * float(draws[0]) - 1), 1 + 0.2 * (2 * float(draws[1]) - 1)
    torch.manual_seed(5)
    out = task.perturbed(frames)
    assert out.shape == (round(40 * factor), 32)
    peak = 10 * alpha  # output band m reads input band m / alpha: the lit band moves to 10 alpha
    lit = out[0, :16]
    assert abs(float((lit * torch.arange(16)).sum() / lit.sum()) - peak) < 0.5  # its centre of mass
    assert torch.allclose(out[:, 16:], 2 * out[:, :16])  # the Δ block warped alike
    quiet = get_task("speech")(speech_config(data))
    assert quiet.perturbed(frames) is frames  # off by default


def test_fixed_frames_give_every_recording_one_length_and_the_trace_its_times(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    task = get_task("speech")(speech_config(data, "data.fixed_frames=24"))
    assert {len(f) for f in task.frames()} == {24}
    raw = task.extractor(audio.load_waveform(task.files[0], 8000, 30))
    resampled = audio.resampled_in_time(audio.per_file_normalised(raw), 24)
    assert torch.equal(task.frames()[0], resampled)
    assert torch.equal(resampled[0], audio.per_file_normalised(raw)[0])  # the ends are kept
    assert torch.equal(resampled[-1], audio.per_file_normalised(raw)[-1])
    model = task.build_model()
    trace = task.trace_recording(model, task.files[0])
    assert trace["spectrogram"].shape[0] == 24 and trace["layers"][0]["cell"].shape[0] == 24
    assert abs(trace["hop_seconds"] * 24 - trace["seconds"]) < 1e-9


# --- training, resume, inference --------------------------------------------------------------------------


def test_trains_to_high_accuracy_and_saves_its_normalisation(trained):
    best = max(m["accuracy"] for m in runs.read_metrics(trained))
    assert best >= 0.9, f"validation accuracy {best} on tones, high tones and sweeps"
    saved = json.loads((trained / FEATURES_FILE).read_text())
    task = SpeechTask(load_run_config(trained))  # the run's own data again: its statistics, recomputed
    task.frames()
    assert saved["mean"] == task.stats.mean.tolist() and saved["std"] == task.stats.std.tolist()


@pytest.mark.parametrize("drawn_options", [
    ["data.time_masks=2", "data.freq_masks=1", "data.stretch=0.2", "data.warp=0.1", "data.mixup=0.3",
     "data.time_warp=0.1"],
    ["data.vtlp=0.15", "data.vtlp_steps=4", "data.time_masks=1", "data.trim_db=50", "data.preemphasis=0.9"],
], ids=["augmentations", "vtlp-trim-preemphasis"])
def test_resume_is_bit_identical_and_reads_the_feature_cache(tmp_path, monkeypatch, drawn_options):
    from test_train import assert_bit_identical, final_weights

    data = make_recordings(tmp_path / "d", per_class=6)
    # random draws (VTLP's copy per example among them), which a resumed run must continue exactly
    extra = ["train.epochs=3", *drawn_options, "model.dropout=0.2"]
    train_and_evaluate(speech_config(data, *extra), tmp_path / "full", quiet=True)
    train_and_evaluate(speech_config(data, *extra, "train.epochs=1"), tmp_path / "split", quiet=True)
    assert (tmp_path / "split" / CACHE_FILE).is_file()

    def no_reading(*args, **kwargs):
        raise AssertionError("the resumed run read a recording again instead of its feature cache")

    monkeypatch.setattr(audio, "load_waveform", no_reading)
    resumed = config_for_resume(tmp_path / "split", epochs=3)
    with batches_drawn(SpeechTask) as drawn:
        train_and_evaluate(resumed, tmp_path / "split", resume=True, quiet=True)
    per_epoch = math.ceil(len(SpeechTask(speech_config(data, *extra)).parts["train"]) / 8)
    assert len(drawn) == 2 * per_epoch, f"the resumed run drew {len(drawn)} batches, not the {2 * per_epoch} left"
    assert_bit_identical(final_weights(tmp_path / "full"), final_weights(tmp_path / "split"))


def test_predict_evaluate_and_inspect_through_the_cli(trained, tmp_path):
    rng = np.random.default_rng(7)
    files = []
    for label in CLASSES:
        samples, rate = example(label, 1, rng)
        files.append(write_wav(tmp_path / "new" / label / f"{label}.wav", samples, rate))
    result = cli("predict", trained, *files, "--json")
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in result.output.splitlines()]
    assert [p["file"] for p in predictions] == [str(f) for f in files]
    assert sum(p["label"] == f.parent.name for p, f in zip(predictions, files, strict=True)) >= 2
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-6 for p in predictions)

    listing = tmp_path / "new" / "list.txt"
    listing.write_text("".join(f"{f.parent.name}/{f.name}\n" for f in files))
    for source in (tmp_path / "new", listing):
        result = cli("evaluate", trained, "--data", source, "--json")
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output)
        assert np.asarray(metrics["confusion_matrix"]).sum() == 3 and "f1" in metrics

    result = cli("inspect", trained, files[0], "--out", tmp_path / "inspect", "--json")
    assert result.exit_code == 0, result.output
    trace = json.loads((tmp_path / "inspect" / "trace.json").read_text())
    frames = 1 + len(audio.load_waveform(files[0], 8000, 30)) // 80
    assert np.asarray(trace["spectrogram"]).shape == (frames, 16)
    assert all(np.asarray(entry["forget"]).shape == (frames, 12) for entry in trace["layers"])
    assert trace["prediction"]["label"] == predictions[0]["label"]
    assert (tmp_path / "inspect" / "inspect.png").stat().st_size > 10_000


# --- bad input: one line naming the file, a non-zero exit ---------------------------------------------------


def _bad_file(kind: str, path: Path) -> Path:
    """A recording that cannot be used, of `kind`, at `path` (its suffix may change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "not audio":
        path.write_text("RIFF? no: a text file with a .wav name\n")
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "0 seconds":
        write_wav(path, np.zeros(0, np.float32), 8000)
    elif kind == "10 minutes":
        write_wav(path, np.zeros(600 * 4000, np.float32), 4000)
    elif kind == "6 channels":
        write_wav(path, np.zeros((4000, 6), np.float32), 8000)
    elif kind == "odd rate":
        write_wav(path, tone(100, 0.5, 1000), 1000)
    elif kind == "damaged mid-file":
        whole = write_wav(path, tone(440, 0.5, 8000), 8000).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])  # cut off: the header promises twice as much
    return path


BAD_FILES = ["not audio", "empty file", "0 seconds", "10 minutes", "6 channels", "odd rate", "damaged mid-file"]
MESSAGES = {"not audio": "not a recording", "empty file": "is empty", "0 seconds": "0-second", "10 minutes":
            "600.0 s long", "6 channels": "6 channels", "odd rate": "1,000 Hz", "damaged mid-file": "cut off"}


def assert_one_line_error(result, *expected: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    for piece in expected:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"


def train_args(data: Path, out: Path, *extra: str) -> list:
    return ["train", "speech", "--data", data, "--out", out, "--quiet", *[a for s in SMALL for a in ("--set", s)],
            *extra]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_recording_among_good_ones_stops_training_with_its_name(tmp_path, kind):
    data = make_recordings(tmp_path / "d", per_class=3)
    bad = _bad_file(kind, data / "low" / "bad_one.wav")
    assert_one_line_error(cli(*train_args(data, tmp_path / "run")), str(bad), MESSAGES[kind])
    assert not (tmp_path / "run" / runs.CONFIG_FILE).exists()  # refused before the run was written


def test_skip_bad_reports_every_skipped_file_and_trains_on_the_rest(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    bad = [_bad_file(kind, data / "high" / f"bad_{k}.wav") for k, kind in enumerate(["not audio", "damaged mid-file"])]
    result = cli(*train_args(data, tmp_path / "run", "--set", "data.skip_bad=true", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2 and all(any(str(path) in line for line in skipped) for path in bad), result.output
    task = SpeechTask(load_run_config(tmp_path / "run"))
    task.frames()
    assert len(task.files) == 9 and not any(path in task.files for path in bad)


def test_bad_folders_and_patterns(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(*train_args(tmp_path / "empty", tmp_path / "r1")), str(tmp_path / "empty"),
                          "no recordings")
    one = make_recordings(tmp_path / "one", per_class=3)
    for label in ("high", "sweep"):
        for file in (one / label).iterdir():
            file.unlink()
    assert_one_line_error(cli(*train_args(one, tmp_path / "r2")), "only the label 'low'")
    folders = make_recordings(tmp_path / "folders", per_class=3)
    result = cli(*train_args(folders, tmp_path / "r3", "--set", "data.label_from=filename", "--set",
                             r"data.label_pattern=^(\d)_"))
    assert_one_line_error(result, str(folders / "high" / "high_0.wav"), "does not match")
    assert_one_line_error(cli(*train_args(folders, tmp_path / "r4", "--set", "data.label_pattern=(")),
                          "data.label_pattern", "not a regular expression")


def test_predict_refuses_recordings_on_a_text_run_and_text_on_a_speech_run(trained, tmp_path):
    from test_web import make_sentiment_run

    text_run = make_sentiment_run(tmp_path)
    recording = write_wav(tmp_path / "word.wav", tone(300, 0.3, 8000), 8000)
    assert_one_line_error(cli("predict", text_run, recording), str(recording), "sentiment", "speech run")
    assert_one_line_error(cli("inspect", text_run, recording, "--out", tmp_path / "i"), str(recording), "speech run")
    assert_one_line_error(cli("predict", trained, "what a lovely film"), "what a lovely film", "recordings")
    notes = tmp_path / "notes.txt"
    notes.write_text("a text, not a recording\n")
    assert_one_line_error(cli("predict", trained, notes), str(notes), "not a recording")
    for kind in BAD_FILES:
        bad = _bad_file(kind, tmp_path / "bad" / f"{kind.replace(' ', '_')}.wav")
        assert_one_line_error(cli("predict", trained, recording, bad), str(bad), MESSAGES[kind])
    other = make_recordings(tmp_path / "other", per_class=1)
    (other / "low").rename(other / "whistle")
    assert_one_line_error(cli("evaluate", trained, "--data", other), "whistle", "not one of this run's")


def test_an_ensemble_of_speech_runs_predicts_with_its_members_mean(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=4)
    run = tmp_path / "ensemble"
    ensemble.train_and_evaluate(speech_config(data, "train.members=2", "train.epochs=2", "data.normalize=train"), run,
                                quiet=True)
    recording = next((data / "low").iterdir())
    task, model = ensemble.open_run(run)
    members = [SpeechTask.from_run(run / f"member-{k}")[1] for k in (1, 2)]
    frames = task.recording_frames(recording)[1]
    expected = np.mean([task.predict_proba(member, [frames])[0] for member in members], axis=0)
    predicted = task.predict_files(model, [str(recording)])[0]
    assert_close(np.asarray(list(predicted["probabilities"].values())), expected, "ensemble probabilities",
                 tolerance=1e-6)
    result = cli("inspect", run, recording, "--out", tmp_path / "views")
    assert result.exit_code == 0 and "gates of member 1 of 2" in result.output, result.output
