"""Classification of numeric sequences: feature vectors per step, e.g. an image read row by row.

`data.path = "digits"` (the default) uses scikit-learn's bundled 8x8 digits: each image is 8 steps of 8
pixel intensities, 1,797 images of 10 classes. Any .npz ([N, T, F] x, [N] y) or .csv works the same way.
The data is split once, stratified and seeded, into train / validation / test parts; the test part is
never used in training and `lstmkit evaluate RUN --split test` scores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lstmkit.config import RunConfig
from lstmkit.data.sequences import NumericSequences, load_digits_sequences, load_sequences
from lstmkit.errors import ConfigError, DataError, RunDirError
from lstmkit.runs import read_json, write_json
from lstmkit.tasks.classify import ClassifierModelConfig, ClassifierTask, split_seed

INPUTS_FILE = "inputs.json"


@dataclass
class SequencesDataConfig:
    path: str = "digits"  # "digits", or a .npz / .csv file
    features: int = 1  # values per step in a .csv row
    valid_size: float = 0.15  # fraction of the data
    test_size: float = 0.15  # fraction of the data, held out for `lstmkit evaluate --split test`
    split_seed: int | None = None  # seeds the train / validation / test split; None: train.seed
    bucket: bool = True


def split_indices(labels: list[int], valid: float, test: float, seed: int) -> dict[str, list[int]]:
    """Stratified, seeded split of range(N) into train / valid / test index lists."""
    if not (0 < valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ConfigError(f"data.valid_size and data.test_size are fractions with a sum below 1; got {valid}, {test}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    labels_array = np.asarray(labels)
    for label in np.unique(labels_array):
        members = rng.permutation(np.flatnonzero(labels_array == label)).tolist()
        n_test, n_valid = round(test * len(members)), max(1, round(valid * len(members)))
        parts["test"] += members[:n_test]
        parts["valid"] += members[n_test:n_test + n_valid]
        parts["train"] += members[n_test + n_valid:]
    if not parts["train"]:
        raise DataError("too few examples to split off validation and test parts; lower the sizes or add data")
    return {name: sorted(part) for name, part in parts.items()}


class SequencesTask(ClassifierTask):
    name = "sequences"
    ModelConfig = ClassifierModelConfig
    DataConfig = SequencesDataConfig
    count_unit = "seq"

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir)
        if run_dir is not None:  # inference: the run directory alone is enough; the data loads only if asked
            self.label_names, self.data_labels = self.load_labels(run_dir)
            self.features = self._load_features(run_dir)
            self.examples = None
            return
        self._load_and_split()

    def _load_and_split(self) -> None:
        config = self.config
        data = self.load(config.data.path)
        if getattr(self, "label_names", data.label_names) != data.label_names:
            raise DataError(f"{config.data.path} now has the labels {data.label_names}, but the run was trained on "
                            f"{self.label_names}; the data changed since training")
        self.label_names = self.data_labels = data.label_names
        self.features = data.x.shape[2]
        self.parts = split_indices(data.labels, config.data.valid_size, config.data.test_size, split_seed(config))
        examples = self.examples_of(data)
        self.examples, self.labels = examples, data.labels
        self.train_examples = [examples[i] for i in self.parts["train"]]
        self.train_labels = [data.labels[i] for i in self.parts["train"]]
        self.valid_examples = [examples[i] for i in self.parts["valid"]]
        self.valid_labels = [data.labels[i] for i in self.parts["valid"]]

    @staticmethod
    def _load_features(run_dir: Path) -> int:
        path = Path(run_dir) / INPUTS_FILE
        features = read_json(path, "lstmkit.sequence_inputs").get("features")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise RunDirError(f"{path} is damaged: features must be a positive integer, got {features!r}")
        return features

    def load(self, path: str, label_names: list[str] | None = None) -> NumericSequences:
        if path == "digits":
            return load_digits_sequences()
        if not path:
            raise ConfigError("no data: pass --data digits, or --data FILE.npz / FILE.csv")
        return load_sequences(Path(path).expanduser(), features=self.config.data.features, label_names=label_names)

    @staticmethod
    def examples_of(data: NumericSequences) -> list[Tensor]:
        lengths = data.lengths.tolist() if data.lengths is not None else [data.x.shape[1]] * len(data)
        return [data.x[i, : lengths[i]].float() for i in range(len(data))]

    def model_inputs(self) -> dict[str, int]:
        return {"input_size": self.features}

    def input_signature(self) -> Any:
        return self.features

    def save_artifacts(self, run_dir: Path) -> None:
        self.save_labels(run_dir)
        write_json(Path(run_dir) / INPUTS_FILE, {"format": "lstmkit.sequence_inputs", "features": self.features})

    def evaluate_path(self, model: Any, path: str) -> dict[str, Any]:
        data = self.load(path, label_names=self.label_names)
        if data.x.shape[2] != self.features:
            raise DataError(f"{path}: {data.x.shape[2]} features per step, but this model reads {self.features}")
        return self.evaluate_examples(model, self.examples_of(data), data.labels)

    def held_out(self, split: str) -> tuple[list[Tensor], list[int]]:
        if split not in ("valid", "test"):
            raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
        if self.examples is None:
            self._load_and_split()  # the run's own data, split again by its seed
        if not self.parts[split]:
            raise ConfigError(f"this run has no {split} part (data.{split}_size was 0)")
        return [self.examples[i] for i in self.parts[split]], [self.labels[i] for i in self.parts[split]]
