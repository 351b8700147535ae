"""Spoken-word classification: recordings -> log-mel or MFCC frames -> the classifier LSTM of `classify.py`.

`--data DIR`: every recording below DIR (WAV, FLAC, OGG), labelled by its folder (`yes/a.wav`, Speech Commands'
layout; `data.label_from = "folder"`) or by group 1 of `data.label_pattern` searched in its file name
(`"filename"`: `^([^_]+)_` reads FSDD's `7_theo_3.wav` as "7"). Held out, in this order:
* test: DIR/testing_list.txt (Speech Commands' file), and the files whose path below DIR matches data.test_match;
* validation: DIR/validation_list.txt, and data.valid_match; when neither names any, a stratified, seeded
  data.valid_size of what is left.
Every recording is resampled to data.sample_rate, optionally trimmed of its leading and trailing silence
(data.trim_db) and pre-emphasised (data.preemphasis), in audio.FeatureExtractor, which every path uses. Its frames
(see lstmkit/data/audio.py) are normalised per file (data.normalize = "file"), with the training part's mean and
deviation ("train", saved in the run as audio_features.json), or centred per file and scaled by the training part's
deviation ("cmn", saved alike). The raw frames of every file are cached in the run (feature_cache.safetensors) and
reused when a run resumes and its files have not changed.

Training may perturb each example's frames: speed (data.stretch), vocal-tract length (data.warp: the mel axis
scaled; or data.vtlp: the filter bank warped, a cached copy of every file's frames per warp factor, one drawn per
example), SpecAugment's time warp (data.time_warp) and its masks (data.time_masks masks of at most
data.time_mask_frames frames, data.freq_masks of at most data.freq_mask_bands bands); all are drawn from torch's
generator, which a checkpoint saves.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lstmkit import runs
from lstmkit.config import RunConfig
from lstmkit.data import audio
from lstmkit.errors import ConfigError, DataError, LstmkitError, RunDirError
from lstmkit.tasks.classify import ClassifierModelConfig, ClassifierTask, split_seed
from lstmkit.tasks.sequences import split_indices

FEATURES_FILE = "audio_features.json"
CACHE_FILE = "feature_cache.safetensors"
LIST_FILES = {"valid": "validation_list.txt", "test": "testing_list.txt"}


@dataclass
class SpeechDataConfig:
    path: str = ""  # a folder of recordings
    label_from: Literal["folder", "filename"] = "folder"
    label_pattern: str = r"^([^_]+)_"  # label_from = "filename": group 1 is the label
    valid_match: str = ""  # a regular expression: recordings whose path below `path` matches it validate
    test_match: str = ""  # ... are the test part (never trained on; `lstmkit evaluate RUN --split test`)
    valid_size: float = 0.15  # fraction held out for validation when no list or valid_match names any
    split_seed: int | None = None  # seeds that split; None: train.seed
    skip_bad: bool = False  # report unreadable recordings and train without them, instead of stopping
    max_seconds: float = 30.0  # a longer recording is an error (one word or phrase per file is expected)
    sample_rate: int = 16000  # every recording is resampled to this rate
    features: Literal["logmel", "mfcc"] = "logmel"
    n_mels: int = 40
    n_mfcc: int = 13
    deltas: int = 0  # 1: append Δ to each frame; 2: Δ and ΔΔ
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float = 0.0  # 0: sample_rate / 2
    trim_db: float = 0.0  # > 0: leading and trailing windows this many dB below the loudest are cut; 0: off
    preemphasis: float = 0.0  # y[n] = x[n] - a x[n-1] before the STFT; 0: off
    # "file": each feature to mean 0 and deviation 1 over the file's frames; "train": by the training part's mean
    # and deviation; "cmn": the file's mean taken off (cepstral mean normalisation), then divided by the training
    # part's deviation of those centred frames, so a file's high cepstra are not blown up to the size of its low
    # ones as "file" does; "none": raw.
    normalize: Literal["file", "train", "cmn", "none"] = "file"
    # > 0: every recording's frames resampled in time to this many (after normalisation), so a slow speaker and
    # a fast one give sequences of one length; 0: frames every hop_ms, as many as the recording has.
    fixed_frames: int = 0
    # Training only, drawn per example from torch's generator: speed (frames resampled in time by a factor in
    # 1 ± stretch), vocal-tract length (log-mel bands read at positions scaled by 1 ± warp, as VTLP warps the
    # frequency axis), then SpecAugment's masks.
    stretch: float = 0.0
    warp: float = 0.0
    # > 0: SpecAugment's time warp: a point inside each training example moves by up to time_warp × its frames
    # (after data.fixed_frames), the frames either side of it stretched or squeezed to meet it; 0: off.
    time_warp: float = 0.0
    # > 0: vocal-tract length perturbation by the filter bank (logmel and MFCC alike): every recording's frames
    # are also computed with the mel filters warped by vtlp_steps factors evenly spaced in 1 ± vtlp (VTLP's warp
    # of the frequency axis), and each training example reads one of those copies, drawn per example.
    vtlp: float = 0.0
    vtlp_steps: int = 5
    # > 0 (with data.vtlp): evaluation and prediction read every recording through this many filter banks, warped
    # by factors evenly spaced in 1 ± vtlp, and average the class probabilities of those views (test-time
    # augmentation: the speaker's vocal tract is unknown, so each length training simulated is tried); 0: off.
    test_vtlp_steps: int = 0
    # > 0: mixup (Zhang et al., 2018) in training: each batch is mixed with itself in another order, x = λ x_i +
    # (1 - λ) x_j with one λ per batch drawn from Beta(mixup, mixup), and learns the mixed labels; 0: off.
    mixup: float = 0.0
    time_masks: int = 0
    time_mask_frames: int = 10
    freq_masks: int = 0
    freq_mask_bands: int = 8
    bucket: bool = True


def feature_spec(data: SpeechDataConfig) -> audio.FeatureSpec:
    return audio.FeatureSpec(sample_rate=data.sample_rate, kind=data.features, n_mels=data.n_mels,
                             n_mfcc=data.n_mfcc, deltas=data.deltas, win_ms=data.win_ms, hop_ms=data.hop_ms,
                             fmin=data.fmin, fmax=data.fmax, trim_db=data.trim_db,
                             preemphasis=data.preemphasis)


class SpeechTask(ClassifierTask):
    name = "speech"
    ModelConfig = ClassifierModelConfig
    DataConfig = SpeechDataConfig
    count_unit = "rec"

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir)
        data = config.data
        self.spec = feature_spec(data)
        self.extractor = audio.FeatureExtractor(self.spec)
        self.pattern = audio.compile_pattern(data.label_pattern, "data.label_pattern")
        for key in ("time_masks", "time_mask_frames", "freq_masks", "freq_mask_bands"):
            if getattr(data, key) < 0:
                raise ConfigError(f"data.{key} must be 0 or more; got {getattr(data, key)}")
        if not (0 <= data.stretch < 1 and 0 <= data.warp < 1):
            raise ConfigError(f"data.stretch and data.warp must be in [0, 1); got {data.stretch}, {data.warp}")
        if not 0 <= data.time_warp < 0.5:
            raise ConfigError(f"data.time_warp must be in [0, 0.5) (0: off; 0.1 moves a point by up to a tenth of the "
                              f"frames); got {data.time_warp}")
        if data.warp and data.features != "logmel":
            raise ConfigError("data.warp scales the mel axis, which MFCCs no longer have; use data.features=logmel")
        if not 0 <= data.vtlp < 0.5:
            raise ConfigError(f"data.vtlp must be in [0, 0.5) (0: off; 0.1 warps by 0.9 to 1.1); got {data.vtlp}")
        if data.vtlp and not 2 <= data.vtlp_steps <= 21:
            raise ConfigError(f"data.vtlp_steps must be 2 to 21 warp factors; got {data.vtlp_steps}")
        if data.test_vtlp_steps and not 2 <= data.test_vtlp_steps <= 21:
            raise ConfigError(f"data.test_vtlp_steps must be 0 (off) or 2 to 21 warp factors; got "
                              f"{data.test_vtlp_steps}")
        if data.test_vtlp_steps and not data.vtlp:
            raise ConfigError("data.test_vtlp_steps averages over warp factors in 1 ± data.vtlp; set data.vtlp "
                              "(e.g. 0.1) or data.test_vtlp_steps=0")
        if not 0 <= data.mixup <= 10:
            raise ConfigError(f"data.mixup must be 0 (off) to 10, the Beta distribution's parameter (0.2 is usual); "
                              f"got {data.mixup}")
        if data.fixed_frames < 0:
            raise ConfigError(f"data.fixed_frames must be 0 (off) or more; got {data.fixed_frames}")
        if data.max_seconds <= 0:
            raise ConfigError(f"data.max_seconds must be above 0; got {data.max_seconds}")
        # data.test_vtlp_steps: the filter banks every recording is read through to be evaluated or predicted
        self.view_extractors = [audio.FeatureExtractor(self.spec, alpha) if alpha != 1.0 else self.extractor
                                for alpha in self.test_vtlp_factors()]
        self.stats: audio.FeatureStats | None = None
        self._frames: list[Tensor] | None = None  # normalised frames of self.files
        self._warped: list[list[Tensor]] = []  # data.vtlp: normalised frames of self.files per warp factor
        self._views: list[list[Tensor]] = []  # data.test_vtlp_steps: the same per test-time factor
        self._parts: dict[str, tuple[list[Tensor], list[int]]] = {}  # (examples, labels) of each part, built once
        if run_dir is not None:  # inference: the run directory alone; the data is read only if asked
            self.label_names, self.data_labels = self.load_labels(run_dir)
            self.stats = self._load_stats(Path(run_dir))
            self.cache_dir, self.files = Path(run_dir), None
            return
        self._discover()

    # --- the data -----------------------------------------------------------------------------------------

    def _discover(self) -> None:
        """The recordings, their labels and parts (no audio read yet: the frames come from the cache or later)."""
        data = self.config.data
        if not data.path:
            raise ConfigError("no data: pass --data DIR, a folder of recordings (one folder per label, or labels in "
                              "the file names with --set data.label_from=filename)")
        root = Path(data.path).expanduser()
        files = audio.recordings_under(root)
        listed = {part: {p.resolve() for p in audio.read_file_list(root / name)}
                  for part, name in LIST_FILES.items() if (root / name).is_file()}
        matches = {part: audio.compile_pattern(getattr(data, f"{part}_match"), f"data.{part}_match")
                   for part in ("valid", "test")}
        self.files, labels, where, self.skipped = [], [], [], []
        for path in files:
            try:
                label = audio.label_of(path, data.label_from, self.pattern)
            except DataError as error:
                if not data.skip_bad:
                    raise
                self.skipped.append(str(error))
                continue
            relative = path.relative_to(root).as_posix()
            part = "train"
            for name in ("test", "valid"):
                if path.resolve() in listed.get(name, ()) or (matches[name] and matches[name].search(relative)):
                    part = name
                    break
            self.files.append(path)
            labels.append(label)
            where.append(part)
        trained = {label for label, part in zip(labels, where, strict=True) if part == "train"}
        self.data_labels = self.label_names = sorted(trained)
        if len(self.label_names) < 2:
            found = f"only the label {self.label_names[0]!r}" if self.label_names else "no recordings"
            how = "one folder per label" if data.label_from == "folder" else "see data.label_pattern"
            raise DataError(f"{root}: the training part has {found}; a classifier needs recordings of at least two "
                            f"labels ({how})")
        for path, label in zip(self.files, labels, strict=True):
            if label not in self.label_names:
                raise DataError(f"{path}: label {label!r} is held out but never trained on (training labels: "
                                f"{', '.join(self.label_names)})")
        self.labels = [self.label_names.index(label) for label in labels]
        self.parts = {name: [i for i, part in enumerate(where) if part == name] for name in ("train", "valid", "test")}
        if not self.parts["valid"]:
            train = self.parts["train"]
            split = split_indices([self.labels[i] for i in train], data.valid_size, 0.0, split_seed(self.config))
            self.parts["valid"] = [train[i] for i in split["valid"]]
            self.parts["train"] = [train[i] for i in split["train"]]
        self.data_summary = (f"data: {len(self.files):,} recordings of {len(self.label_names)} labels: "
                             f"{len(self.parts['train']):,} train, {len(self.parts['valid']):,} validation, "
                             f"{len(self.parts['test']):,} test")

    def vtlp_factors(self, steps: int | None = None) -> list[float]:
        """The warp factors of data.vtlp, data.vtlp_steps of them or `steps` (none when data.vtlp is 0)."""
        data = self.config.data
        if not data.vtlp:
            return []
        steps = data.vtlp_steps if steps is None else steps
        return [round(float(a), 6) for a in np.linspace(1 - data.vtlp, 1 + data.vtlp, steps)]

    def test_vtlp_factors(self) -> list[float]:
        """The warp factors of data.test_vtlp_steps (none when it is 0)."""
        steps = self.config.data.test_vtlp_steps
        return self.vtlp_factors(steps) if steps else []

    def cached_factors(self) -> list[float]:
        """Every warp factor whose copy of the frames training or evaluation reads, sorted."""
        return sorted(set(self.vtlp_factors()) | set(self.test_vtlp_factors()))

    def _raw_frames(self) -> list[list[Tensor]]:
        """Un-normalised frames of every file: [the frames] and, with data.vtlp or data.test_vtlp_steps, a copy
        per warp factor of cached_factors() after them; from the run's cache when its files and features are
        unchanged."""
        factors = self.cached_factors()
        key = {"spec": asdict(self.spec), "files": [[str(p), *self._stamp(p)] for p in self.files]}
        if factors:
            key["vtlp"] = factors
        cache = self.cache_dir / CACHE_FILE if self.cache_dir is not None else None
        if cache is not None and cache.is_file():
            try:
                tensors, metadata = runs.load_tensors(cache)
                if metadata.get("key") == key:
                    lengths = tensors["lengths"].tolist()
                    return [list(torch.split(tensors[name], lengths)) for name in sorted(tensors)
                            if name.startswith("frames")]
            except (LstmkitError, KeyError, RuntimeError):
                pass  # a damaged or stale cache is rebuilt
        # factor 1 (the middle of an odd vtlp_steps) is the plain filter bank: its copy is the unwarped frames
        warped = {alpha: audio.FeatureExtractor(self.spec, alpha) for alpha in factors if alpha != 1.0}
        copies: list[list[Tensor]] = [[] for _ in range(1 + len(factors))]
        bad = []
        for i, path in enumerate(self.files):
            try:
                waveform = audio.load_waveform(path, self.spec.sample_rate, self.config.data.max_seconds)
            except DataError as error:
                if not self.config.data.skip_bad:
                    raise
                bad.append(i)
                self.skipped.append(str(error))
                continue
            # one STFT read through every filter bank
            banks = dict(zip([1.0, *warped], audio.frames_per_bank([self.extractor, *warped.values()], waveform),
                             strict=True))
            copies[0].append(banks[1.0])
            for copy, alpha in zip(copies[1:], factors, strict=True):
                copy.append(banks[alpha])
        if bad:  # the frames already line up with the files kept; the cache is keyed by those
            self._drop(bad)
            key["files"] = [[str(p), *self._stamp(p)] for p in self.files]
        if cache is not None:
            tensors = {f"frames{k:02d}": torch.cat(copy) for k, copy in enumerate(copies)}
            tensors["lengths"] = torch.tensor([len(f) for f in copies[0]], dtype=torch.long)
            runs.save_tensors(cache, tensors, {"format": "lstmkit.feature_cache", "key": key})
        return copies

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        status = os.stat(path)
        return [status.st_size, status.st_mtime_ns]

    def _drop(self, bad: list[int]) -> None:
        """Forget the files at `bad` (skip_bad), keeping every part's indices right."""
        dropped = set(bad)
        keep = [i for i in range(len(self.files)) if i not in dropped]
        new_index = {old: new for new, old in enumerate(keep)}
        self.files = [self.files[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        self.parts = {name: [new_index[i] for i in part if i in new_index] for name, part in self.parts.items()}
        if not self.parts["train"] or not self.parts["valid"]:
            raise DataError("after skipping the unreadable recordings no training or validation part is left")

    def frames(self) -> list[Tensor]:
        """Normalised frames of every file (computed once)."""
        if self._frames is None:
            if self.files is None:
                self._discover()
            raw, *warped = self._raw_frames()
            if self.skipped:
                for line in self.skipped:
                    print(f"skipped {line}", file=sys.stderr)
                self.data_summary += f"; {len(self.skipped)} bad recordings skipped (data.skip_bad)"
            how = self.config.data.normalize
            if how in ("train", "cmn") and self.stats is None:
                centred = audio.per_file_centred if how == "cmn" else (lambda frames: frames)
                self.stats = audio.FeatureStats.of([centred(raw[i]) for i in self.parts["train"]])
            self._frames = [self.normalised(f) for f in raw]
            by_factor = {alpha: [self.normalised(f) for f in copy]
                         for alpha, copy in zip(self.cached_factors(), warped, strict=True)}
            self._warped = [by_factor[alpha] for alpha in self.vtlp_factors()]
            self._views = [by_factor[alpha] for alpha in self.test_vtlp_factors()]
        return self._frames

    def normalised(self, frames: Tensor) -> Tensor:
        """Raw frames -> what the model reads: normalised, then resampled to data.fixed_frames if it is set."""
        how = self.config.data.normalize
        if how == "file":
            frames = audio.per_file_normalised(frames)
        elif how == "train":
            frames = self.stats.apply(frames)
        elif how == "cmn":
            frames = self.stats.apply(audio.per_file_centred(frames))
        return self.in_time(frames)

    def in_time(self, frames: Tensor) -> Tensor:
        fixed = self.config.data.fixed_frames
        return audio.resampled_in_time(frames, fixed) if fixed else frames

    def _part(self, name: str) -> tuple[list[Tensor], list[int]]:
        """(examples, labels) of one part, built once: the classifier reads train_examples per example (the length
        buckets' sort key, every batch), and the frames do not change after `frames()`. With data.test_vtlp_steps
        a validation or test example is its views [V, T, F] (see predict_proba)."""
        if name not in self._parts:
            frames = self.frames()
            indices = self.parts[name]
            if name != "train" and self._views:
                examples = [torch.stack([view[i] for view in self._views]) for i in indices]
            else:
                examples = [frames[i] for i in indices]
            self._parts[name] = examples, [self.labels[i] for i in indices]
        return self._parts[name]

    @property
    def train_examples(self) -> list[Tensor]:
        return self._part("train")[0]

    @property
    def train_labels(self) -> list[int]:
        return self._part("train")[1]

    @property
    def valid_examples(self) -> list[Tensor]:
        return self._part("valid")[0]

    @property
    def valid_labels(self) -> list[int]:
        return self._part("valid")[1]

    # --- the model and training ---------------------------------------------------------------------------

    def model_inputs(self) -> dict[str, int]:
        return {"input_size": self.spec.size}

    def input_signature(self) -> Any:
        return asdict(self.spec), self.config.data.normalize, self.stats.to_json() if self.stats else None

    def train_plan(self, epoch: int) -> list[list[int]]:
        self.frames()  # the features (and any skipped files) before the plan indexes them
        return super().train_plan(epoch)

    def make_batch(self, item: list[int], rank: int, world: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """The classifier's batch; with data.mixup its examples mixed in pairs, the labels [B, C] mixed alike."""
        inputs, lengths, labels, counted = super().make_batch(item, rank, world)
        alpha = self.config.data.mixup
        if not alpha:
            return inputs, lengths, labels, counted
        share = float(torch.distributions.Beta(alpha, alpha).sample())  # torch's generator, as every draw here
        partner = torch.randperm(len(labels))
        targets = torch.nn.functional.one_hot(labels, len(self.label_names)).float()
        # a shorter partner's padding is zeros, the mean of normalised frames: the longer one's end, faded
        return (share * inputs + (1 - share) * inputs[partner], torch.maximum(lengths, lengths[partner]),
                share * targets + (1 - share) * targets[partner], counted)

    def training_example(self, index: int) -> Tensor:
        """Train example `index` as this step sees it: with data.vtlp, one warped copy drawn per example; then
        the frame perturbations and masks. Every draw is from torch's generator, which checkpoints save."""
        if self._warped:
            copy = self._warped[int(torch.randint(0, len(self._warped), ()))]
            return self.augmented(copy[self.parts["train"][index]])
        return self.augmented(self.train_examples[index])

    def augmented(self, example: Tensor) -> Tensor:
        """A training example's frames perturbed, then masked."""
        return self.masked(self.perturbed(example))

    def perturbed(self, frames: Tensor) -> Tensor:
        data = self.config.data
        frames = audio.perturbed(frames, 1 + self.spec.deltas, data.stretch, data.warp)
        return audio.time_warped(frames, data.time_warp)

    def masked(self, frames: Tensor) -> Tensor:
        data = self.config.data
        return audio.masked(frames, 1 + self.spec.deltas, data.time_masks, data.time_mask_frames, data.freq_masks,
                            data.freq_mask_bands)

    # --- the run directory --------------------------------------------------------------------------------

    def save_artifacts(self, run_dir: Path) -> None:
        self.save_labels(run_dir)
        document: dict[str, Any] = {"format": "lstmkit.audio_features", "size": self.spec.size}
        if self.stats is not None:
            document |= self.stats.to_json()
        runs.write_json(Path(run_dir) / FEATURES_FILE, document)

    def _load_stats(self, run_dir: Path) -> audio.FeatureStats | None:
        path = run_dir / FEATURES_FILE
        document = runs.read_json(path, "lstmkit.audio_features")
        if document.get("size") != self.spec.size:
            raise RunDirError(f"{path} is damaged: size {document.get('size')!r}, but the run's features have "
                              f"{self.spec.size} values per frame")
        if self.config.data.normalize not in ("train", "cmn"):
            return None
        return audio.FeatureStats.from_json(document, self.spec.size, str(path))

    # --- evaluation, prediction, inspection ---------------------------------------------------------------

    def held_out(self, split: str) -> tuple[list[Tensor], list[int]]:
        if split not in ("valid", "test"):
            raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
        if not self.parts_known():
            trained = self.label_names
            self._discover()  # the run's own data, split again as in training
            if self.label_names != trained:
                raise DataError(f"{self.config.data.path} now has the labels {self.label_names}, but the run was "
                                f"trained on {trained}; the data changed since training")
        if not self.parts[split]:
            raise ConfigError(f"this run has no {split} part (no {LIST_FILES[split]} and no data.{split}_match)")
        return self._part(split)

    def parts_known(self) -> bool:
        return getattr(self, "files", None) is not None

    def recording_frames(self, path: Path) -> tuple[np.ndarray, Tensor]:
        """(waveform at the run's rate, the normalised frames the model reads) of one recording."""
        waveform = audio.load_waveform(Path(path), self.spec.sample_rate, self.config.data.max_seconds)
        return waveform, self.normalised(self.extractor(waveform))

    def recording_example(self, path: Path) -> Tensor:
        """What predict_proba reads of one recording: its frames [T, F], or with data.test_vtlp_steps its views
        [V, T, F] through the warped filter banks (one STFT for all)."""
        if not self.view_extractors:
            return self.recording_frames(path)[1]
        waveform = audio.load_waveform(Path(path), self.spec.sample_rate, self.config.data.max_seconds)
        return torch.stack([self.normalised(f) for f in audio.frames_per_bank(self.view_extractors, waveform)])

    def predict_proba(self, model: Any, examples: list[Tensor]) -> np.ndarray:
        """[N, C] class probabilities; an example [V, T, F] is V views of one recording (data.test_vtlp_steps),
        whose probabilities are averaged, as an ensemble averages its members'."""
        if all(example.dim() == 2 for example in examples):
            return super().predict_proba(model, examples)
        views = [example if example.dim() == 3 else example[None] for example in examples]
        probabilities = super().predict_proba(model, [view for stack in views for view in stack])
        ends = np.cumsum([len(stack) for stack in views])
        return np.stack([probabilities[end - len(stack):end].mean(axis=0)
                         for stack, end in zip(views, ends, strict=True)])

    def evaluate_path(self, model: Any, path: str) -> dict[str, Any]:
        """Scores on DIR (labelled as the run's data was) or FILE_LIST (a text file of recording paths)."""
        source = Path(path).expanduser()
        files = audio.read_file_list(source) if source.is_file() else audio.recordings_under(source)
        examples, labels = [], []
        for file in files:
            label = audio.label_of(file, self.config.data.label_from, self.pattern)
            if label not in self.label_names:
                raise DataError(f"{file}: label {label!r} is not one of this run's ({', '.join(self.label_names)})")
            examples.append(self.recording_example(file))
            labels.append(self.label_names.index(label))
        return self.evaluate_examples(model, examples, labels)

    def predict_files(self, model: Any, paths: list[str]) -> list[dict[str, Any]]:
        """Label and probabilities per recording."""
        for path in paths:
            if not Path(path).exists():
                raise DataError(f"{path}: no such recording; a speech run predicts from recordings (paths of WAV, "
                                "FLAC or OGG files)")
        probabilities = self.predict_proba(model, [self.recording_example(Path(p)) for p in paths])
        return [{"file": str(p), **self.labelled(probs)} for p, probs in zip(paths, probabilities, strict=True)]

    @torch.no_grad()
    def trace_recording(self, model: Any, path: Path, max_frames: int | None = None) -> dict[str, Any]:
        """The spectrogram of one recording and every gate of the LSTM reading its frames, frame by frame, plus
        the prediction: what `lstmkit inspect` draws and the page shows. An ensemble shows its first member's
        gates beside the ensemble's prediction."""
        from lstmkit.introspect import GATE_NAMES, trace
        from lstmkit.models import pool
        from lstmkit.tasks.classify import class_probabilities

        waveform, frames = self.recording_frames(path)
        if max_frames is not None and len(frames) > max_frames:
            raise DataError(f"{path}: {len(frames):,} frames, over the limit of {max_frames:,}; send a shorter clip")
        members = getattr(model, "members", None)
        traced = members[0] if members is not None else model
        traced.eval()
        gate_trace = trace(traced.lstm, frames[None])
        if members is not None or self.view_extractors:  # the prediction of the whole model, as predict's
            probabilities = self.predict_proba(model, [self.recording_example(path)])[0]
        else:
            pooled = pool(gate_trace.output, gate_trace.lengths, traced.pooling, traced.lstm.num_directions)
            probabilities = class_probabilities(traced.head(pooled))[0].double().numpy()
        layers = []
        for layer, per_direction in enumerate(gate_trace.layers):
            for direction, gates in enumerate(per_direction):
                entry: dict[str, Any] = {"layer": layer, "direction": "forward" if direction == 0 else "reverse"}
                for field, name in GATE_NAMES.items():
                    entry[name] = getattr(gates, field)[:, 0].float().numpy()  # [T, H]
                layers.append(entry)
        seconds = len(waveform) / self.spec.sample_rate
        spectrogram = self.in_time(self.extractor.spectrogram(waveform).t())  # [T, M] dB, the frames' T
        hop = self.spec.hop_length / self.spec.sample_rate
        if self.config.data.fixed_frames:  # the frames span what is left after trimming (data.trim_db)
            hop = len(self.extractor.trimmed(waveform)) / self.spec.sample_rate / len(spectrogram)
        return {"file": Path(path).name, "seconds": seconds, "hop_seconds": hop, "spectrogram": spectrogram.numpy(),
                "layers": layers, "prediction": self.labelled(probabilities),
                "shown_member": f"member 1 of {len(members)}" if members is not None else None}


def trace_json(result: dict[str, Any], decimals: int = 4) -> dict[str, Any]:
    """trace_recording's result with its arrays as rounded nested lists (JSON-ready)."""
    def rounded(array: np.ndarray) -> list:
        return np.round(array.astype(np.float64), decimals).tolist()

    return {**result, "spectrogram": rounded(result["spectrogram"]),
            "layers": [{key: rounded(value) if isinstance(value, np.ndarray) else value for key, value in entry.items()}
                       for entry in result["layers"]]}
