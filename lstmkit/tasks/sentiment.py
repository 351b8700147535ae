"""Sentiment analysis / text classification: the seed recipe, done right.

Defaults are the classic Keras IMDB example: a vocabulary of the 10,000 most frequent words (ids 0 = pad and
1 = unknown included, so no id can reach past the embedding), reviews cut to their last 500 words,
Embedding(10000, 128) -> LSTM(64) -> Dense(1, sigmoid), Adam, binary cross-entropy, batch 32, 5 epochs.
Unlike the seed, padding costs nothing (length buckets, each sequence read at its own last word) and 20% of the
training data, at most 5,000 reviews, is held out for validation, as the test split must stay unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lstmkit.config import RunConfig
from lstmkit.data.reviews import LabelledTexts, load_labelled_text, train_validation_split
from lstmkit.data.vocab import Vocab, tokenize_words
from lstmkit.errors import ConfigError, DataError
from lstmkit.models import pool
from lstmkit.tasks.classify import ClassifierModelConfig, ClassifierTask, class_probabilities, named_labels, split_seed

VOCAB_FILE = "vocab.json"


@dataclass
class SentimentDataConfig:
    path: str = ""  # labelled text: .jsonl/.csv/.tsv (optionally .gz), an aclImdb folder or tarball, or "imdb"
    text_field: str = "text"
    label_field: str = "label"
    valid_path: str = ""  # a separate validation file; else valid_size examples are held out of `path`
    # A count (>= 1) or a fraction (< 1) of the data, then at most valid_max (0: no cap): 20% of any dataset,
    # and 5,000 of IMDB's 25,000 training reviews, as the IMDB recipe holds out.
    valid_size: float = 0.2
    valid_max: int = 5000
    # Names for the data's labels in their sorted order, comma-separated: "negative,positive" for 0/1 labels.
    # Empty: the labels as the data writes them (string labels such as "pos" are names already).
    label_names: str = ""
    split_seed: int | None = None  # seeds the validation split; None: train.seed
    num_words: int = 10000  # vocabulary size, the pad and unknown ids included
    maxlen: int = 500  # words kept per text
    truncating: Literal["pre", "post"] = "pre"  # "pre" keeps a long text's end, as Keras does
    bucket: bool = True  # batch texts of similar length together
    max_chars: int = 200_000  # longer texts are an error, not a silent slowdown


def resolve_data_path(path: str) -> Path:
    """A data path, or "imdb": the aclImdb tarball, downloaded once into the cache."""
    if not path:
        raise ConfigError("no training data: pass --data PATH (a .jsonl/.csv/.tsv file, an aclImdb folder or "
                          "aclImdb_v1.tar.gz), or --data imdb to download the IMDB reviews")
    if path == "imdb":
        from lstmkit.data.download import download_imdb

        return download_imdb()
    return Path(path).expanduser().resolve()


class SentimentTask(ClassifierTask):
    name = "sentiment"
    ModelConfig = ClassifierModelConfig
    DataConfig = SentimentDataConfig
    count_unit = "reviews"
    # Runs saved before data.valid_max existed held out all of a fractional valid_size.
    former_defaults = {"data.valid_max": 0}

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        """Load and encode the training data; or, with `run_dir`, only what predicting needs from that run."""
        super().__init__(config, run_dir)
        data = config.data
        if data.maxlen < 1 or data.num_words < 3:
            raise ConfigError("data.maxlen must be >= 1 and data.num_words >= 3 (pad, unknown and one word)")
        if run_dir is not None:
            self.vocab = Vocab.load(Path(run_dir) / VOCAB_FILE)
            self.label_names, self.data_labels = self.load_labels(run_dir)
            return
        labelled = self.load(data.path, known_labels=False)
        self.data_labels = labelled.label_names
        self.label_names = named_labels(labelled.label_names, data.label_names)
        if data.valid_path:
            train, valid = labelled, self.load(data.valid_path)
            self.data_summary = (f"data: {len(train):,} examples for training, {len(valid):,} for validation "
                                 f"(from {data.valid_path})")
        else:
            train, valid = self.split(labelled)
            self.data_summary = (f"data: {len(labelled):,} examples, {len(valid):,} held out for validation "
                                 f"(data.valid_size={data.valid_size:g}"
                                 f"{f', at most data.valid_max={data.valid_max}' if data.valid_size < 1 else ''})")
        train_tokens = [tokenize_words(text) for text in train.texts]
        self.vocab = Vocab.build(train_tokens, num_words=data.num_words)  # from the training part only
        self.train_examples = [self._ids(tokens, train.source, i) for i, tokens in enumerate(train_tokens)]
        self.train_labels = train.labels
        self.valid_examples = self.encode(valid.texts, source=valid.source)
        self.valid_labels = valid.labels

    def load(self, path: str, known_labels: bool = True) -> LabelledTexts:
        """Labelled texts from `path`; with `known_labels`, of this run's labels, written as the training data
        wrote them or by their names."""
        data = self.config.data
        names = dict(zip(self.label_names, self.data_labels, strict=True)) if known_labels else None
        return load_labelled_text(resolve_data_path(path), text_field=data.text_field, label_field=data.label_field,
                                  label_names=self.data_labels if known_labels else None, label_aliases=names,
                                  max_chars=data.max_chars)

    def split(self, labelled: LabelledTexts) -> tuple[LabelledTexts, LabelledTexts]:
        """(train, validation) parts of the data, as data.valid_size, data.valid_max and the split seed say."""
        data = self.config.data
        size = int(data.valid_size) if data.valid_size >= 1 else float(data.valid_size)
        return train_validation_split(labelled, size, seed=split_seed(self.config), valid_max=data.valid_max)

    def _ids(self, tokens: list[str], source: str, index: int) -> Tensor:
        if not tokens:
            raise DataError(f"{source}: text {index + 1} has no words after tokenizing; remove it or give it text")
        return torch.tensor(self.vocab.encode(self.truncate(tokens)), dtype=torch.long)

    def truncate(self, tokens: list[str]) -> list[str]:
        """At most data.maxlen tokens: the last ones ("pre", as Keras does) or the first ("post")."""
        maxlen = self.config.data.maxlen
        if len(tokens) <= maxlen:
            return tokens
        return tokens[-maxlen:] if self.config.data.truncating == "pre" else tokens[:maxlen]

    def encode(self, texts: list[str], source: str = "input") -> list[Tensor]:
        return [self._ids(tokenize_words(text), source, i) for i, text in enumerate(texts)]

    def model_inputs(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab), "embedding_dim": self.config.model.embedding_dim}

    def input_signature(self) -> Any:
        data = self.config.data
        return self.vocab.tokens, data.maxlen, data.truncating

    def save_artifacts(self, run_dir: Path) -> None:
        self.vocab.save(Path(run_dir) / VOCAB_FILE)
        self.save_labels(run_dir)

    # --- what `lstmkit evaluate` and `lstmkit predict` call -------------------------------------------------

    def held_out(self, split: str) -> tuple[list[Tensor], list[int]]:
        """The run's own validation part, rebuilt from its data path and seed."""
        data = self.config.data
        if split != "valid":
            raise ConfigError(f"a sentiment run holds out a validation part only; for {split!r} pass --data PATH")
        valid = self.load(data.valid_path) if data.valid_path else self.split(self.load(data.path))[1]
        return self.encode(valid.texts, valid.source), valid.labels

    def evaluate_path(self, model: Any, path: str) -> dict[str, Any]:
        labelled = self.load(path)
        return self.evaluate_examples(model, self.encode(labelled.texts, labelled.source), labelled.labels)

    def check_length(self, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            if len(text) > self.config.data.max_chars:
                raise DataError(f"text {i + 1} has {len(text):,} characters, over the limit of "
                                f"{self.config.data.max_chars:,} (data.max_chars of this run)")

    def predict_texts(self, model: Any, texts: list[str]) -> list[dict[str, Any]]:
        """Label and probabilities per text: what Keras' removed `predict_classes` should have been."""
        self.check_length(texts)
        probabilities = self.predict_proba(model, self.encode(texts, source="input"))
        return [{"text": text, **self.labelled(probs)} for text, probs in zip(texts, probabilities, strict=True)]

    # --- what `lstmkit inspect` and the web page call ---------------------------------------------------

    def encode_text(self, text: str) -> tuple[list[str], list[int]]:
        """The tokens the model reads of `text` (tokenized and truncated as in training) and their ids."""
        self.check_length([text])
        tokens = tokenize_words(text)
        if not tokens:
            raise DataError("the text has no words; type some")
        tokens = self.truncate(tokens)
        return tokens, self.vocab.encode(tokens)

    def predict_trace(self, model: Any, gate_trace: Any) -> dict[str, Any]:
        """The prediction for a traced text, from the traced forward's own output ([1, T, D*H])."""
        pooled = pool(gate_trace.output, gate_trace.lengths, model.pooling, model.lstm.num_directions)
        return self.labelled(class_probabilities(model.head(pooled))[0].double().cpu().numpy())
