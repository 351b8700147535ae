"""Recordings for the speech task: read, check, resample, label, and turn into log-mel or MFCC frames.

Reading is soundfile's (libsndfile, bundled in its wheels: WAV, FLAC, OGG); resampling is soxr's. The features are
computed here with torch's STFT and a mel filter bank written from its definition (Slaney's, the one librosa uses
by default), so the package does not pull librosa and numba for two matrix products; the tests check every
feature against librosa's own computation.

    waveform [N] at data.sample_rate ─► |STFT|² [F, T] ─► mel [M, T] ─► dB ─► (DCT: MFCC [C, T]) ─► +Δ, ΔΔ
         ─► frames [T, M or C (× 1 + deltas)], normalised per file or with the training set's statistics
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lstmkit.errors import ConfigError, DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
MIN_RATE, MAX_RATE = 4000, 384_000  # below 4 kHz no speech band survives; above 384 kHz is no recording format
AMIN = 1e-10  # floor of the mel power before dB: 10 log10(1e-10) = -100 dB, librosa's power_to_db default
STD_FLOOR = 1e-3  # dB; a constant (silent) channel normalises to 0 instead of dividing by 0


# --- reading ----------------------------------------------------------------------------------------------


def _wav_cut_off(path: Path, size: int) -> str | None:
    """For a RIFF WAVE file: a message if its data chunk promises more bytes than the file holds (a download or
    copy cut off mid-file, which libsndfile reads silently as a shorter recording), else None."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, length = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                present = size - offset - 8
                if length != 0xFFFFFFFF and length > present:
                    return (f"is damaged: its header promises {length:,} bytes of audio but the file holds "
                            f"{present:,} (cut off mid-file?); copy it again or remove it")
                return None
            offset += 8 + length + (length & 1)
    return None


def read_audio(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a recording; a DataError naming the file for anything
    that is not a usable one (empty, not audio, 0 s, over max_seconds, over 2 channels, an odd rate, damaged)."""
    import soundfile

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a recording")
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes); remove it or record it again")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise DataError(f"{path} is not a recording soundfile can read (WAV, FLAC, OGG): "
                        f"{str(error).rpartition(': ')[2] or error}") from None
    if info.frames <= 0:
        raise DataError(f"{path} has no samples (a 0-second recording); remove it")
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise DataError(f"{path} has an odd sample rate of {info.samplerate:,} Hz; lstmkit reads {MIN_RATE:,} to "
                        f"{MAX_RATE:,} Hz (resample it, e.g. sox in.wav -r 16000 out.wav)")
    if info.channels > 2:
        raise DataError(f"{path} has {info.channels} channels; lstmkit reads mono or stereo recordings (mix it down, "
                        "e.g. sox in.wav -c 1 out.wav)")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise DataError(f"{path} is {seconds:,.1f} s long, over data.max_seconds={max_seconds:g}; cut it into clips "
                        "of one word or phrase each (or raise data.max_seconds)")
    damaged = _wav_cut_off(path, size) if info.format == "WAV" else None
    if damaged:
        raise DataError(f"{path} {damaged}")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise DataError(f"{path} is damaged: decoding failed ({error}); copy it again or remove it") from None
    if len(samples) == 0:
        raise DataError(f"{path} has no samples (a 0-second recording); remove it")
    if not np.isfinite(samples).all():
        raise DataError(f"{path} holds NaN or infinite samples (a damaged float WAV); remove it")
    return samples.mean(axis=1), rate  # stereo: the mean of both channels


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`samples` at `target` Hz (soxr's high-quality polyphase filter); unchanged when the rates agree."""
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def load_waveform(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    samples, rate = read_audio(path, max_seconds)
    return resample(samples, rate, sample_rate)


# --- labels -----------------------------------------------------------------------------------------------


def recordings_under(root: Path) -> list[Path]:
    """Every recording below `root`, sorted; Speech Commands' `_background_noise_` (and any `_*` folder) skipped."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
             and not any(part.startswith("_") for part in p.relative_to(root).parts[:-1])]
    if not found:
        raise DataError(f"{root} holds no recordings ({', '.join(AUDIO_SUFFIXES)}); point --data at the folder "
                        "of the recordings")
    return sorted(found)


def read_file_list(list_path: Path) -> list[Path]:
    """The recordings a list names, one path a line (relative to the list's folder, as Speech Commands' lists)."""
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{list_path}: no such file list") from None
    except UnicodeDecodeError:
        raise DataError(f"{list_path} is not a text file list (one recording path per line)") from None
    paths = [(list_path.parent / line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    if not paths:
        raise DataError(f"{list_path} lists no recordings")
    return paths


def label_of(path: Path, label_from: str, pattern: re.Pattern[str] | None) -> str:
    """The label of one recording: its folder's name, or group 1 of `pattern` searched in its file name."""
    if label_from == "folder":
        return path.parent.name
    match = pattern.search(path.name) if pattern is not None else None
    if match is None or not match.groups() or not match.group(1):
        raise DataError(f"{path}: data.label_pattern {pattern.pattern if pattern else ''!r} does not match its name "
                        "(the pattern's first group must capture the label, e.g. '^([^_]+)_' for 7_theo_3.wav)")
    return match.group(1)


def compile_pattern(pattern: str, key: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"{key}={pattern!r} is not a regular expression: {error}") from None


# --- features ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """What turns a waveform into frames; the same in training, evaluation and prediction."""

    sample_rate: int = 16000
    kind: str = "logmel"  # "logmel" or "mfcc"
    n_mels: int = 40
    n_mfcc: int = 13
    deltas: int = 0  # 0, 1 (Δ) or 2 (Δ and ΔΔ), appended to each frame
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float = 0.0  # 0: half the sample rate
    # > 0: the leading and trailing windows more than trim_db below the loudest one are cut before the STFT (the
    # silence a recording is padded with varies from one recorder to the next); 0: off.
    trim_db: float = 0.0
    preemphasis: float = 0.0  # y[n] = x[n] - a x[n-1] before the STFT (a in [0, 1); 0: off): lifts the high bands

    @property
    def win_length(self) -> int:
        return max(2, round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        return max(1, round(self.hop_ms * self.sample_rate / 1000))

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()  # the next power of two

    @property
    def size(self) -> int:
        """Values per frame."""
        return (self.n_mels if self.kind == "logmel" else self.n_mfcc) * (1 + self.deltas)

    def check(self) -> None:
        top = self.fmax or self.sample_rate / 2
        if self.kind not in ("logmel", "mfcc"):
            raise ConfigError(f"data.features must be 'logmel' or 'mfcc', got {self.kind!r}")
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ConfigError(f"data.sample_rate must be {MIN_RATE} to {MAX_RATE} Hz, got {self.sample_rate}")
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise ConfigError(f"data.fmin and data.fmax must satisfy 0 <= fmin < fmax <= sample_rate / 2 "
                              f"({self.sample_rate / 2:g}); got {self.fmin:g}, {top:g}")
        if self.n_mels < 1 or not 1 <= self.n_mfcc <= self.n_mels or self.deltas not in (0, 1, 2):
            raise ConfigError("data.n_mels >= 1, 1 <= data.n_mfcc <= data.n_mels and data.deltas in 0, 1, 2; got "
                              f"{self.n_mels}, {self.n_mfcc}, {self.deltas}")
        if not 0 < self.hop_ms <= self.win_ms <= 1000:
            raise ConfigError(f"data.hop_ms and data.win_ms must satisfy 0 < hop_ms <= win_ms <= 1000; got "
                              f"{self.hop_ms:g}, {self.win_ms:g}")
        if not 0 <= self.trim_db <= 200:
            raise ConfigError(f"data.trim_db must be 0 (off) to 200 dB below the loudest window; got {self.trim_db:g}")
        if not 0 <= self.preemphasis < 1:
            raise ConfigError(f"data.preemphasis must be in [0, 1) (0: off; 0.97 is usual); got {self.preemphasis:g}")
        if self.n_fft // 2 + 1 < self.n_mels:
            raise ConfigError(f"data.n_mels={self.n_mels} is more than the {self.n_fft // 2 + 1} frequency bins of a "
                              f"{self.win_ms:g} ms window; lower it or widen data.win_ms")


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 steps per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


VTLP_KNEE = 0.8  # of the Nyquist frequency: where VTLP's warp bends so that the band's top stays where it is


def vtlp_warped(hz: np.ndarray, alpha: float, nyquist: float) -> np.ndarray:
    """Vocal-tract length perturbation's warp of the frequency axis (Jaitly and Hinton, 2013): f -> alpha f up to
    a knee, then the straight line to (nyquist, nyquist), so the warped axis still ends at the Nyquist frequency."""
    knee = VTLP_KNEE * nyquist * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - alpha * knee) * (nyquist - hz) / (nyquist - knee)
    return np.where(hz <= knee, alpha * hz, upper)


def mel_filter_bank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                    alpha: float = 1.0) -> np.ndarray:
    """[M, n_fft/2 + 1] triangular filters at centres equally spaced in mels, each scaled to unit area
    (2 / its width in Hz), so a filter's output does not grow with its bandwidth. alpha != 1: each STFT bin is
    read at its VTLP-warped frequency (a filter centred at c Hz then hears about c / alpha Hz)."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    if alpha != 1.0:
        bins = vtlp_warped(bins, alpha, sample_rate / 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] orthonormal DCT-II: row k is sqrt(2/N) cos(pi k (2n + 1) / 2N), row 0 scaled by 1/sqrt(2)."""
    n = np.arange(n_in)
    matrix = np.sqrt(2.0 / n_in) * np.cos(np.pi * np.arange(n_out)[:, None] * (2 * n[None, :] + 1) / (2 * n_in))
    matrix[0] /= math.sqrt(2.0)
    return matrix


def deltas(frames: Tensor, width: int = 2) -> Tensor:
    """[C, T] -> [C, T] regression slope over ±width frames (HTK's Δ), edge frames repeated."""
    padded = torch.nn.functional.pad(frames[None], (width, width), mode="replicate")[0]
    T = frames.shape[1]
    slope = sum(n * (padded[:, width + n:width + n + T] - padded[:, width - n:width - n + T])
                for n in range(1, width + 1))
    return slope / (2 * sum(n * n for n in range(1, width + 1)))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: the STFT and filter bank of one short recording are too small to share, and two threads
    made FSDD's extraction 7x slower than one (1.06 s against 0.14 s for 200 files, 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FeatureExtractor:
    """FeatureSpec's frames of a waveform; the filter bank and window are built once."""

    def __init__(self, spec: FeatureSpec, alpha: float = 1.0) -> None:
        """alpha: the VTLP warp factor of the filter bank (1: none; training's perturbed copies use others)."""
        spec.check()
        self.spec = spec
        fmax = spec.fmax or spec.sample_rate / 2
        bank = mel_filter_bank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, fmax, alpha)
        self.mel = torch.from_numpy(bank).float()
        self.dct = torch.from_numpy(dct_matrix(spec.n_mfcc, spec.n_mels)).float()
        self.window = torch.hann_window(spec.win_length, periodic=True)

    def trimmed(self, waveform: np.ndarray | Tensor) -> Tensor:
        """[N] -> [N'] the samples from the first to the last window of win_length (every hop) whose power is within
        spec.trim_db of the loudest window's; unchanged when trim_db is 0 or the recording is one window long."""
        x = torch.as_tensor(waveform, dtype=torch.float32)
        spec = self.spec
        if not spec.trim_db or len(x) <= spec.win_length:
            return x
        power = x.unfold(0, spec.win_length, spec.hop_length).square().mean(dim=1)
        decibels = 10.0 * torch.log10(power.clamp(min=AMIN))
        loud = torch.nonzero(decibels >= decibels.max() - spec.trim_db).flatten()
        first, last = int(loud[0]), int(loud[-1])
        return x[first * spec.hop_length:last * spec.hop_length + spec.win_length]

    def prepared(self, waveform: np.ndarray | Tensor) -> Tensor:
        """[N] samples -> what the STFT reads: trimmed (spec.trim_db), then pre-emphasised (spec.preemphasis)."""
        x = self.trimmed(waveform)
        a = self.spec.preemphasis
        if a:
            x = torch.cat([x[:1], x[1:] - a * x[:-1]])
        return x

    def spectrogram(self, waveform: np.ndarray | Tensor) -> Tensor:
        """[N] samples -> [M, T] the mel power in dB of the prepared samples: the frames' picture (inspect)."""
        with one_thread():
            return self.mel_db(self.prepared(waveform))

    def power(self, waveform: Tensor) -> Tensor:
        """[N] -> [F, T] STFT power, T = 1 + N // hop (frames centred on every hop, zero-padded ends)."""
        spec = self.spec
        stft = torch.stft(waveform, spec.n_fft, spec.hop_length, spec.win_length, self.window, center=True,
                          pad_mode="constant", return_complex=True)
        return stft.real.square() + stft.imag.square()

    def mel_db(self, waveform: Tensor) -> Tensor:
        """[N] -> [M, T] mel power in dB."""
        return self._mel_db_of(self.power(waveform))

    def _mel_db_of(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(self.mel @ power, min=AMIN))

    def __call__(self, waveform: np.ndarray | Tensor) -> Tensor:
        """[N] samples -> [T, size] frames (not yet normalised)."""
        with one_thread():
            return self.frames_of_power(self.power(self.prepared(waveform)))

    def frames_of_power(self, power: Tensor) -> Tensor:
        """[F, T] STFT power (of `prepared` samples) -> [T, size] frames through this extractor's filter bank."""
        base = self._mel_db_of(power)
        if self.spec.kind == "mfcc":
            base = self.dct @ base
        parts = [base]
        for _ in range(self.spec.deltas):
            parts.append(deltas(parts[-1]))
        return torch.cat(parts, dim=0).t().contiguous()


def frames_per_bank(extractors: list[FeatureExtractor], waveform: np.ndarray | Tensor) -> list[Tensor]:
    """[N] samples -> the [T, size] frames of each extractor, all of one FeatureSpec and differing only in their
    filter bank's VTLP warp: the samples are prepared and their STFT taken once, then read through every bank."""
    spec = extractors[0].spec
    if any(extractor.spec != spec for extractor in extractors):
        raise ValueError("frames_per_bank shares one STFT: every extractor must have the same FeatureSpec")
    with one_thread():
        power = extractors[0].power(extractors[0].prepared(waveform))
        return [extractor.frames_of_power(power) for extractor in extractors]


# --- normalisation ----------------------------------------------------------------------------------------


def per_file_normalised(frames: Tensor) -> Tensor:
    """Each feature to mean 0, standard deviation 1 over the file's own frames (cepstral mean and variance
    normalisation): a quiet speaker and a loud one give the same frames."""
    mean = frames.mean(dim=0, keepdim=True)
    std = frames.std(dim=0, unbiased=False, keepdim=True).clamp(min=STD_FLOOR)
    return (frames - mean) / std


def per_file_centred(frames: Tensor) -> Tensor:
    """Each feature to mean 0 over the file's own frames (cepstral mean normalisation) and nothing more: the
    features keep their spread relative to one another and to other files (data.normalize = "cmn" then scales
    them by the training part's deviations)."""
    return frames - frames.mean(dim=0, keepdim=True)


@dataclass
class FeatureStats:
    """Per-feature mean and standard deviation over every frame of the training recordings."""

    mean: Tensor  # [F]
    std: Tensor  # [F]

    @classmethod
    def of(cls, examples: list[Tensor]) -> FeatureStats:
        frames = torch.cat(examples).double()
        return cls(frames.mean(0).float(), frames.std(0, unbiased=False).clamp(min=STD_FLOOR).float())

    def apply(self, frames: Tensor) -> Tensor:
        return (frames - self.mean) / self.std

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, document: dict[str, Any], size: int, source: str) -> FeatureStats:
        mean, std = document.get("mean"), document.get("std")
        ok = all(isinstance(v, list) and len(v) == size and all(isinstance(x, (int, float)) for x in v)
                 for v in (mean, std))
        if not ok or min(std) <= 0:
            raise DataError(f"{source} is damaged: \"mean\" and \"std\" must be {size} numbers each, std above 0")
        return cls(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


# --- augmentation in training (random draws from torch's generator, which a checkpoint saves) ----------------


def resampled_in_time(frames: Tensor, T: int) -> Tensor:
    """[T0, F] -> [T, F] by linear interpolation between neighbouring frames (the first and last kept)."""
    if len(frames) == T:
        return frames
    if len(frames) == 1:
        return frames.expand(T, -1).clone()
    return torch.nn.functional.interpolate(frames.t()[None], size=T, mode="linear", align_corners=True)[0].t()


def perturbed(frames: Tensor, blocks: int, stretch: float, warp: float) -> Tensor:
    """Speed and vocal-tract length perturbation of one example's frames [T, F] (F = blocks × bands: the base
    features, then Δ, ΔΔ), by linear interpolation: time resampled by a factor in 1 ± stretch; band m read at
    m / alpha, alpha in 1 ± warp (VTLP's warp of the frequency axis, on the mel axis)."""
    if stretch:
        factor = 1.0 + stretch * (2 * float(torch.rand(())) - 1)
        frames = resampled_in_time(frames, max(1, round(len(frames) * factor)))
    if warp:
        alpha = 1.0 + warp * (2 * float(torch.rand(())) - 1)
        bands = frames.shape[1] // blocks
        source = (torch.arange(bands, dtype=torch.float32) / alpha).clamp(max=bands - 1)
        low = source.floor().long()
        high = (low + 1).clamp(max=bands - 1)
        weight = source - low
        split = frames.reshape(len(frames), blocks, bands)
        frames = (split[..., low] * (1 - weight) + split[..., high] * weight).reshape(len(frames), -1)
    return frames


def time_warped(frames: Tensor, warp: float) -> Tensor:
    """SpecAugment's time warp of [T, F] frames: a point drawn in the middle of the recording moves by up to
    warp × T frames, the frames on either side stretched or squeezed to meet it (linear interpolation), the ends
    kept; one speaker's syllables are longer relative to the others' than another's. warp 0: unchanged."""
    T = len(frames)
    reach = int(warp * T)
    if not warp or reach < 1 or 2 * reach + 3 > T:
        return frames
    point = int(torch.randint(reach + 1, T - 1 - reach, ()))  # the point at `point` is drawn to `moved`
    moved = point + int(torch.randint(-reach, reach + 1, ()))
    t = torch.arange(T, dtype=torch.float32)
    source = torch.where(t <= moved, t * point / moved, point + (t - moved) * (T - 1 - point) / (T - 1 - moved))
    low = source.floor().long().clamp(max=T - 2)
    weight = (source - low)[:, None]
    return frames[low] * (1 - weight) + frames[low + 1] * weight


def masked(frames: Tensor, blocks: int, time_masks: int, time_width: int, freq_masks: int, freq_width: int) -> Tensor:
    """SpecAugment's masks on [T, F] frames: `time_masks` runs of up to `time_width` frames and `freq_masks` runs of
    up to `freq_width` bands set to 0 (the mean, after normalisation); a band is masked in every block (Δ, ΔΔ)."""
    if not (time_masks or freq_masks):
        return frames
    frames = frames.clone()
    T, F = frames.shape
    bands = F // blocks
    for _ in range(time_masks):
        width = int(torch.randint(0, min(time_width, T) + 1, ()))
        start = int(torch.randint(0, T - width + 1, ()))
        frames[start:start + width] = 0.0
    for _ in range(freq_masks):
        width = int(torch.randint(0, min(freq_width, bands) + 1, ()))
        start = int(torch.randint(0, bands - width + 1, ()))
        for block in range(blocks):
            frames[:, block * bands + start:block * bands + start + width] = 0.0
    return frames
