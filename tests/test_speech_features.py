"""The speech task's waveform preparation and filter-bank VTLP: silence trimming, pre-emphasis, the VTLP warp of
the mel filters and the warped copies training draws from (their resume: test_speech.py), on generated audio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_speech import make_recordings, speech_config, tone, write_wav

from lstmkit.data import audio
from lstmkit.errors import ConfigError
from lstmkit.tasks import get_task


def padded_tone(lead: float, spoken: float, trail: float, rate: int = 8000) -> tuple[np.ndarray, int, int]:
    """A 500 Hz tone between stretches of faint noise: (samples, first and one-past-last sample of the tone)."""
    rng = np.random.default_rng(0)
    parts = [1e-4 * rng.standard_normal(round(lead * rate)), tone(500, spoken, rate),
             1e-4 * rng.standard_normal(round(trail * rate))]
    start = len(parts[0])
    return np.concatenate(parts).astype(np.float32), start, start + len(parts[1])


def test_trimming_cuts_the_silence_around_the_sound_and_nothing_of_it():
    samples, start, stop = padded_tone(0.3, 0.4, 0.2)
    spec = audio.FeatureSpec(8000, trim_db=40)
    trimmed = audio.FeatureExtractor(spec).trimmed(samples)
    win, hop = spec.win_length, spec.hop_length
    # the first kept window is the first one that overlaps the tone enough to be within 40 dB of it, so the cut
    # lies within one window of the tone's edges, and never inside it by more than the window's overlap
    first = next(k * hop for k in range(len(samples) // hop)
                 if np.array_equal(samples[k * hop:k * hop + len(trimmed)], trimmed.numpy()))
    assert start - win <= first <= start
    assert stop <= first + len(trimmed) <= stop + win
    assert len(trimmed) % hop == win % hop  # whole windows every hop
    untouched = audio.FeatureExtractor(audio.FeatureSpec(8000)).trimmed(samples)
    assert torch.equal(untouched, torch.from_numpy(samples))  # off by default


def test_trimmed_features_do_not_depend_on_the_padding():
    spec = audio.FeatureSpec(8000, kind="mfcc", deltas=1, trim_db=40)
    extractor = audio.FeatureExtractor(spec)
    short, long = padded_tone(0.05, 0.4, 0.05)[0], padded_tone(0.5, 0.4, 0.3)[0]
    assert abs(len(extractor(short)) - len(extractor(long))) <= 3  # the tone's frames, not the padding's
    assert len(audio.FeatureExtractor(audio.FeatureSpec(8000, kind="mfcc"))(long)) > len(extractor(long)) + 50


def test_the_inspected_spectrogram_is_of_the_samples_the_model_reads(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=2)
    task = get_task("speech")(speech_config(data, "data.trim_db=20", "data.preemphasis=0.97"))
    recording = write_wav(tmp_path / "padded.wav", padded_tone(0.3, 0.4, 0.2)[0], 8000, "FLOAT")
    waveform = audio.load_waveform(recording, 8000, 30)
    assert len(task.extractor.trimmed(waveform)) < 0.5 * len(waveform)  # the faint noise around the tone is cut
    trace = task.trace_recording(task.build_model(), recording)
    frames = task.recording_frames(recording)[1]
    assert trace["spectrogram"].shape[0] == len(frames) == trace["layers"][0]["cell"].shape[0]
    expected = task.extractor.mel_db(task.extractor.prepared(waveform)).t()
    assert torch.equal(torch.from_numpy(trace["spectrogram"]), expected)


def test_preemphasis_is_the_first_order_difference():
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    extractor = audio.FeatureExtractor(audio.FeatureSpec(8000, preemphasis=0.97))
    expected = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    np.testing.assert_allclose(extractor.prepared(x).numpy(), expected, rtol=0, atol=1e-6)
    low, high = tone(200, 0.5, 8000), tone(3000, 0.5, 8000)
    # |1 - a e^{-iw}|: the 3 kHz tone gains ~11 dB over the 200 Hz one (a = 0.97)
    gain = [float(extractor.prepared(t).square().mean() / torch.tensor(t).square().mean()) for t in (low, high)]
    expected_gain = [abs(1 - 0.97 * np.exp(-2j * np.pi * f / 8000)) ** 2 for f in (200, 3000)]
    np.testing.assert_allclose(gain, expected_gain, rtol=0.02)


@pytest.mark.parametrize("alpha", [0.8, 0.93, 1.0, 1.1, 1.25])
def test_vtlp_warp_is_linear_below_its_knee_and_keeps_the_band_ends(alpha):
    nyquist = 4000.0
    hz = np.linspace(0, nyquist, 801)
    warped = audio.vtlp_warped(hz, alpha, nyquist)
    knee = audio.VTLP_KNEE * nyquist * min(alpha, 1) / alpha
    below = hz <= knee
    np.testing.assert_allclose(warped[below], alpha * hz[below], rtol=1e-12)
    assert warped[0] == 0 and math.isclose(warped[-1], nyquist)
    assert np.all(np.diff(warped) > 0) and warped.max() <= nyquist + 1e-9  # one-to-one onto [0, nyquist]


@pytest.mark.parametrize("alpha", [0.85, 1.15])
def test_a_warped_filter_bank_hears_a_tone_at_the_band_of_alpha_times_its_frequency(alpha):
    spec = audio.FeatureSpec(8000, n_mels=40)
    sound = tone(1200, 0.3, 8000)
    centres = audio.mel_to_hz(np.linspace(audio.hz_to_mel(0.0), audio.hz_to_mel(4000.0), 42))[1:-1]
    plain = audio.FeatureExtractor(spec).mel_db(torch.from_numpy(sound)).mean(dim=1)
    warped = audio.FeatureExtractor(spec, alpha).mel_db(torch.from_numpy(sound)).mean(dim=1)
    assert abs(centres[int(plain.argmax())] - 1200) < 60
    assert abs(centres[int(warped.argmax())] - 1200 * alpha) < 70  # 1.2 kHz is heard at 1.02 or 1.38 kHz


def test_vtlp_copies_are_drawn_per_training_example_and_never_evaluated(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    task = get_task("speech")(speech_config(data, "data.vtlp=0.2", "data.vtlp_steps=3"))
    assert task.vtlp_factors() == [0.8, 1.0, 1.2]
    frames = task.frames()
    assert len(task._warped) == 3 and all(len(copy) == len(frames) for copy in task._warped)
    file = task.files[task.parts["train"][0]]
    waveform = audio.load_waveform(file, 8000, 30)
    for alpha, copy in zip([0.8, 1.0, 1.2], task._warped, strict=True):
        expected = task.normalised(audio.FeatureExtractor(task.spec, alpha)(waveform))
        assert torch.equal(copy[task.parts["train"][0]], expected)
    assert torch.equal(task._warped[1][0], frames[0])  # alpha 1 is the unwarped frames
    assert not torch.equal(task._warped[0][0], frames[0])
    torch.manual_seed(0)
    seen = {tuple(task.training_example(0).flatten()[:5].tolist()) for _ in range(30)}
    assert len(seen) == 3  # each of the three copies drawn
    assert task.valid_examples[0] is frames[task.parts["valid"][0]]  # evaluation reads the unwarped frames


def test_one_stft_through_several_filter_banks_gives_each_banks_own_frames():
    spec = audio.FeatureSpec(8000, kind="mfcc", n_mels=20, deltas=2, trim_db=40, preemphasis=0.9)
    extractors = [audio.FeatureExtractor(spec, alpha) for alpha in (0.9, 1.0, 1.13)]
    sound = padded_tone(0.1, 0.3, 0.1)[0] + 0.2 * tone(1700, 0.5, 8000)
    shared = audio.frames_per_bank(extractors, sound)
    for extractor, frames in zip(extractors, shared, strict=True):
        assert torch.equal(frames, extractor(sound))
    assert not torch.allclose(shared[0], shared[1])
    with pytest.raises(ValueError, match="same FeatureSpec"):
        audio.frames_per_bank([extractors[0], audio.FeatureExtractor(audio.FeatureSpec(8000))], sound)


def test_test_time_views_are_the_warped_frames_and_their_probabilities_are_averaged(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=3)
    # training draws from 3 factors, evaluation averages 5: the cache holds the union, each copy where it belongs
    task = get_task("speech")(speech_config(data, "data.vtlp=0.2", "data.vtlp_steps=3", "data.test_vtlp_steps=5",
                                            "data.fixed_frames=20"))
    assert task.cached_factors() == [0.8, 0.9, 1.0, 1.1, 1.2]
    frames = task.frames()
    file = task.parts["valid"][0]
    waveform = audio.load_waveform(task.files[file], 8000, 30)
    expected = torch.stack([task.normalised(audio.FeatureExtractor(task.spec, alpha)(waveform))
                            for alpha in (0.8, 0.9, 1.0, 1.1, 1.2)])
    assert torch.equal(task.valid_examples[0], expected)  # [5, T, F]: the views of one recording
    assert torch.equal(task.valid_examples[0][2], frames[file])
    assert all(copy is task._views[k] for k, copy in zip((0, 2, 4), task._warped, strict=True))  # shared
    assert all(example.dim() == 2 for example in task.train_examples)  # training reads one copy, drawn

    model = task.build_model().eval()
    views = task.valid_examples[:3]
    averaged = task.predict_proba(model, views)
    each = [task.predict_proba(model, list(stack)).mean(axis=0) for stack in views]
    np.testing.assert_allclose(averaged, np.stack(each), rtol=0, atol=1e-6)
    plain = task.predict_proba(model, [stack[2] for stack in views])
    assert not np.allclose(averaged, plain, atol=1e-6)  # the warped views change the prediction
    mixed = task.predict_proba(model, [views[0], frames[file]])  # a [T, F] example is one view
    np.testing.assert_allclose(mixed, np.stack([averaged[0], plain[0]]), rtol=0, atol=1e-6)
    assert torch.equal(task.recording_example(task.files[file]), expected)  # what predict and evaluate read


def test_a_run_with_test_time_views_predicts_and_evaluates_with_their_mean(tmp_path):
    from lstmkit import ensemble

    data = make_recordings(tmp_path / "d", per_class=4)
    run = tmp_path / "run"
    config = speech_config(data, "data.vtlp=0.1", "data.test_vtlp_steps=3", "train.epochs=2", "data.fixed_frames=16")
    ensemble.train_and_evaluate(config, run, quiet=True)
    task, model = ensemble.open_run(run)
    recording = next((data / "high").iterdir())
    waveform = audio.load_waveform(recording, 8000, 30)
    views = [task.normalised(audio.FeatureExtractor(task.spec, alpha)(waveform)) for alpha in (0.9, 1.0, 1.1)]
    expected = task.predict_proba(model, views).mean(axis=0)
    predicted = task.predict_files(model, [str(recording)])[0]
    np.testing.assert_allclose(list(predicted["probabilities"].values()), expected, rtol=0, atol=1e-6)
    assert task.trace_recording(model, recording)["prediction"]["label"] == predicted["label"]
    metrics = task.evaluate_path(model, str(data))
    labels = [task.label_names.index(path.parent.name) for path in sorted(data.rglob("*.wav"))]
    scores = task.predict_proba(model, [task.recording_example(path) for path in sorted(data.rglob("*.wav"))])
    assert metrics["accuracy"] == pytest.approx(float(np.mean(scores.argmax(axis=1) == labels)))


def test_mixup_mixes_each_batch_with_itself_reordered_and_its_labels_alike(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=4)
    task = get_task("speech")(speech_config(data, "data.mixup=0.4"))
    plain_task = get_task("speech")(speech_config(data))
    item = list(range(8))
    torch.manual_seed(3)
    inputs, lengths, targets, counted = task.make_batch(item, 0, 1)
    plain, plain_lengths, labels, _ = plain_task.make_batch(item, 0, 1)  # no draws: no other augmentation is on
    torch.manual_seed(3)
    share = float(torch.distributions.Beta(0.4, 0.4).sample())
    partner = torch.randperm(8)
    assert 0 < share < 1 and counted == 8 and not torch.equal(partner, torch.arange(8))
    torch.testing.assert_close(inputs, share * plain + (1 - share) * plain[partner], rtol=0, atol=1e-6)
    assert torch.equal(lengths, torch.maximum(plain_lengths, plain_lengths[partner]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert torch.allclose(targets[torch.arange(8), labels], torch.where(
        labels == labels[partner], torch.tensor(1.0), torch.tensor(share)))
    # the soft targets' loss is the mixed loss of the two labels
    logits = torch.randn(8, 3)
    expected = (share * torch.nn.functional.cross_entropy(logits, labels)
                + (1 - share) * torch.nn.functional.cross_entropy(logits, labels[partner]))
    torch.testing.assert_close(task.loss_from_logits(logits, targets), expected)


@pytest.mark.parametrize(("setting", "message"), [
    ("data.trim_db=-3", "data.trim_db must be 0"),
    ("data.preemphasis=1.0", "data.preemphasis must be in [0, 1)"),
    ("data.vtlp=0.6", "data.vtlp must be in [0, 0.5)"),
    ("data.vtlp_steps=1", "data.vtlp_steps must be 2 to 21"),
    ("data.test_vtlp_steps=1", "data.test_vtlp_steps must be 0 (off) or 2 to 21"),
    ("data.test_vtlp_steps=-2", "data.test_vtlp_steps must be 0 (off) or 2 to 21"),
    ("data.test_vtlp_steps=40", "data.test_vtlp_steps must be 0 (off) or 2 to 21"),
    ("data.mixup=-0.1", "data.mixup must be 0 (off) to 10"),
    ("data.time_warp=0.5", "data.time_warp must be in [0, 0.5)"),
])
def test_bad_preparation_and_vtlp_settings_are_one_line_errors(tmp_path, setting, message):
    data = make_recordings(tmp_path / "d", per_class=2)
    extra = [setting] if "steps" not in setting else ["data.vtlp=0.1", setting]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        get_task("speech")(speech_config(data, *extra))


def test_test_time_views_without_vtlp_are_a_one_line_error(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=2)
    with pytest.raises(ConfigError, match=r"data.test_vtlp_steps averages over warp factors in 1 ± data.vtlp; set"):
        get_task("speech")(speech_config(data, "data.test_vtlp_steps=5"))


def test_cepstral_mean_normalisation_centres_each_file_and_scales_by_the_training_deviation(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=4)
    task = get_task("speech")(speech_config(data, "data.features=mfcc", "data.n_mfcc=8", "data.deltas=1",
                                            "data.normalize=cmn"))
    frames = task.frames()
    raws = [task.extractor(audio.load_waveform(path, 8000, 30)) for path in task.files]
    centred = [raw - raw.mean(dim=0) for raw in raws]
    train = torch.cat([centred[i] for i in task.parts["train"]]).double()
    torch.testing.assert_close(task.stats.std.double(), train.std(0, unbiased=False), rtol=1e-5, atol=0)
    for raw, got in zip(raws, frames, strict=True):
        torch.testing.assert_close(got, (raw - raw.mean(dim=0) - task.stats.mean) / task.stats.std)
        torch.testing.assert_close(got.mean(dim=0), torch.zeros(16), rtol=0, atol=1e-4)
    # one deviation for every file, unlike data.normalize=file: the files' spreads stay apart
    spreads = torch.stack([got.std(dim=0, unbiased=False) for got in frames])  # [files, features]
    assert float(spreads.max(dim=0).values.min() / spreads.min(dim=0).values.max()) > 1.5
    # the run keeps the deviations, and a task opened on the run reads the same frames
    (tmp_path / "run").mkdir()
    task.save_artifacts(tmp_path / "run")
    reopened = get_task("speech")(task.config, tmp_path / "run")
    torch.testing.assert_close(reopened.stats.std, task.stats.std, rtol=0, atol=0)
    torch.testing.assert_close(reopened.recording_frames(task.files[0])[1], frames[0])


def test_time_warp_moves_one_drawn_point_and_stretches_the_frames_either_side_to_meet_it(tmp_path):
    data = make_recordings(tmp_path / "d", per_class=2)
    task = get_task("speech")(speech_config(data, "data.time_warp=0.2"))
    frames = torch.arange(40, dtype=torch.float32)[:, None] * torch.tensor([1.0, -2.0, 0.5])  # frame t holds t
    warped = []
    for seed in range(20):
        torch.manual_seed(seed)
        point = int(torch.randint(9, 31, ()))  # reach = 0.2 × 40 = 8 frames from either end and from the point
        moved = point + int(torch.randint(-8, 9, ()))
        torch.manual_seed(seed)
        out = task.perturbed(frames)
        assert out.shape == frames.shape
        assert torch.equal(out[0], frames[0]) and torch.equal(out[-1], frames[-1])  # the ends stay
        torch.testing.assert_close(out[moved], frames[point])  # the drawn point lands where it was moved to
        slope = out[1:, 0] - out[:-1, 0]  # a constant step on either side of it
        torch.testing.assert_close(slope[:moved], torch.full((moved,), point / moved))
        torch.testing.assert_close(slope[moved:], torch.full((39 - moved,), (39 - point) / (39 - moved)))
        torch.testing.assert_close(out[:, 1], -2 * out[:, 0])  # every feature alike
        warped.append(moved != point)
    assert 10 < sum(warped) < 20  # most draws move the point; a shift of 0 leaves the frames as they were
    assert get_task("speech")(speech_config(data)).perturbed(frames) is frames  # off by default
