"""What sentiment analysis and numeric-sequence classification share: length buckets, loss, metrics, predict.

A subclass fills in, from its own data: `label_names` and `data_labels`, `train_examples` / `valid_examples`
(one tensor per example: [T_i] token ids or [T_i, F] features), `train_labels` / `valid_labels`, and
`model_inputs()` (the input-layer arguments of SequenceClassifier).

Batches: each epoch shuffles the examples (seeded by seed and epoch), cuts them into chunks of 50 batches,
sorts each chunk by length and cuts it into batches, then shuffles the batches. Every batch then holds
sequences of similar length, so post-padding wastes little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lstmkit import runs
from lstmkit.errors import ConfigError, RunDirError
from lstmkit.lstm_config import LSTMConfig
from lstmkit.metrics import classification_metrics
from lstmkit.models import SequenceClassifier
from lstmkit.tasks import Task

EVAL_BATCH = 256
LABELS_FILE = "labels.json"


@dataclass
class ClassifierModelConfig:
    embedding_dim: int = 128  # token inputs only
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    dropout: float = 0.0  # between LSTM layers and before the output layer
    word_dropout: float = 0.0  # each step's input vector (a word's embedding) zeroed with this probability
    pooling: Literal["last", "mean", "max", "max_mean"] = "last"  # max_mean: both, side by side
    init: Literal["torch", "keras"] = "torch"  # "keras": the seed's initialisers (see SequenceClassifier)


def split_seed(config: Any) -> int:
    """The seed of the train / validation split: data.split_seed, else train.seed. An ensemble's members pin it,
    so that models trained with different seeds are judged on the same held-out examples."""
    return config.train.seed if config.data.split_seed is None else config.data.split_seed


def collate(examples: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Post-pad a list of [T_i] or [T_i, F] tensors: (inputs [B, T_max(, F)], lengths [B])."""
    lengths = torch.tensor([len(e) for e in examples], dtype=torch.long)
    padded = examples[0].new_zeros((len(examples), int(lengths.max()), *examples[0].shape[1:]))
    for row, example in enumerate(examples):
        padded[row, : len(example)] = example
    return padded, lengths


def class_probabilities(logits: Tensor) -> Tensor:
    """[N, C] probabilities from the classifier's logits: one logit (two classes, the seed's sigmoid output)
    gives [1 - p, p]; more give a softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class ClassifierTask(Task):
    metric = "accuracy"
    metric_mode = "max"
    count_unit = "ex"

    label_names: list[str]  # what predictions, metrics and the page show
    data_labels: list[str]  # the same labels as the data writes them ("0", "1"), in the same order
    train_examples: list[Tensor]
    train_labels: list[int]
    valid_examples: list[Tensor]
    valid_labels: list[int]

    def model_inputs(self) -> dict[str, int]:
        raise NotImplementedError

    def input_signature(self) -> Any:
        """What decides how an input becomes the model's tensors: runs whose signatures differ cannot be
        ensembled. Token classifiers: the vocabulary and truncation; numeric sequences: the feature count."""
        raise NotImplementedError

    @classmethod
    def from_run(cls, run_dir: Path, config: Any = None) -> tuple[Task, nn.Module]:
        """A run's task and model. An ensemble's run (train.members > 1) is opened by `lstmkit.ensemble.open_run`,
        the layer above the tasks."""
        from lstmkit.tasks import load_run_config

        config = config or load_run_config(run_dir)
        if config.train.members > 1:
            raise RunDirError(f"{run_dir} is an ensemble of {config.train.members} runs: open it with "
                              "lstmkit.ensemble.open_run (as the CLI and the web page do)")
        return super().from_run(run_dir, config)

    def build_model(self) -> nn.Module:
        m = self.config.model
        if m.lstm.proj_size >= m.lstm.hidden_size:
            raise ConfigError(f"model.proj_size ({m.lstm.proj_size}) must be below model.hidden_size "
                              f"({m.lstm.hidden_size}): it projects h down; 0 turns it off")
        return SequenceClassifier(
            num_classes=len(self.label_names), lstm=m.lstm, dropout=m.dropout, word_dropout=m.word_dropout,
            pooling=m.pooling, init=m.init, **self.model_inputs(),
        )

    # --- training -----------------------------------------------------------------------------------------

    def train_plan(self, epoch: int) -> list[list[int]]:
        batch_size = self.config.train.batch_size
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_examples), generator=generator).tolist()
        if not getattr(self.config.data, "bucket", True):
            return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
        chunk = 50 * batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(self.train_examples[i]))
            batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def make_batch(self, item: list[int], rank: int, world: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """This process's examples of the batch, and how many of them count: a process left without any (a batch
        smaller than the process count) still runs one, so DDP's collectives meet, and counts 0 (its gradient
        then weighs nothing, `train._scaled_for_share`)."""
        share = item[rank::world]
        counted = len(share)
        share = share or item[:1]
        inputs, lengths = collate([self.training_example(i) for i in share])
        return inputs, lengths, torch.tensor([self.train_labels[i] for i in share]), counted

    def training_example(self, index: int) -> Tensor:
        """Train example `index` as this step's batch sees it: itself, unless a task augments it (speech)."""
        return self.train_examples[index]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor, int]) -> tuple[Tensor, int]:
        inputs, lengths, labels, counted = batch
        logits = model(inputs, lengths).float()
        return self.loss_from_logits(logits, labels), counted

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """labels: [B] class indices, or [B, C] class probabilities (soft targets: the speech task's mixup)."""
        if logits.shape[1] == 1:  # two classes: one logit, binary cross-entropy (the seed's sigmoid output)
            target = labels.float() if labels.dim() == 1 else labels[:, 1]
            return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), target)
        return nn.functional.cross_entropy(logits, labels)

    # --- evaluation and prediction ------------------------------------------------------------------------

    def labelled(self, probs: Any) -> dict[str, Any]:
        """One example's class probabilities [C] as the label, its probability and every class's, by name."""
        best = int(probs.argmax())
        return {"label": self.label_names[best], "probability": float(probs[best]),
                "probabilities": {name: float(p) for name, p in zip(self.label_names, probs, strict=True)}}

    @torch.no_grad()
    def predict_proba(self, model: nn.Module, examples: list[Tensor]) -> np.ndarray:
        """[N, C] class probabilities, in the order of `examples` (batched by length for speed)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        probabilities = np.zeros((len(examples), len(self.label_names)))
        for start in range(0, len(order), EVAL_BATCH):
            rows = order[start:start + EVAL_BATCH]
            inputs, lengths = collate([examples[i] for i in rows])
            logits = model(inputs.to(device), lengths.to(device))
            probabilities[rows] = class_probabilities(logits).cpu().double().numpy()
        model.train(was_training)
        return probabilities

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return self.evaluate_examples(model, self.valid_examples, self.valid_labels)

    def evaluate_examples(self, model: nn.Module, examples: list[Tensor], labels: list[int]) -> dict[str, Any]:
        return classification_metrics(np.asarray(labels), self.predict_proba(model, examples), self.label_names)

    # --- the run directory --------------------------------------------------------------------------------

    def save_labels(self, run_dir: Path) -> None:
        """labels.json: the label names, and the labels as the data wrote them when the names rename them."""
        document = {"format": "lstmkit.labels", "labels": self.label_names}
        if self.data_labels != self.label_names:
            document["data_labels"] = self.data_labels
        runs.write_json(Path(run_dir) / LABELS_FILE, document)

    @staticmethod
    def load_labels(run_dir: Path) -> tuple[list[str], list[str]]:
        """(label names, the labels as the data writes them); a run saved without names has the data's labels."""
        path = Path(run_dir) / LABELS_FILE
        document = runs.read_json(path, "lstmkit.labels")
        labels = document.get("labels")
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(name, str) for name in labels):
            raise RunDirError(f"{path} is damaged: \"labels\" must be a list of at least two names")
        data_labels = document.get("data_labels", labels)
        if (not isinstance(data_labels, list) or len(data_labels) != len(labels)
                or not all(isinstance(name, str) for name in data_labels)):
            raise RunDirError(f"{path} is damaged: \"data_labels\" must list one data label per name")
        return labels, data_labels


def named_labels(data_labels: list[str], names: str) -> list[str]:
    """The label names a run shows: `names` ("negative,positive", for the data's labels in their sorted order),
    or, when it is empty, the data's own labels."""
    if not names.strip():
        return list(data_labels)
    given = [name.strip() for name in names.split(",")]
    if len(given) != len(data_labels) or len(set(given)) != len(given) or not all(given):
        raise ConfigError(f"data.label_names must be {len(data_labels)} distinct names, one per label of the data "
                          f"({', '.join(data_labels)}, in that order), separated by commas; got {names!r}")
    return given
