"""Language modelling: learn a text's next character or word, with truncated BPTT, then generate from it.

The training text becomes B columns read top to bottom (`lstmkit.data.text.batchify`); each step reads one
window of `bptt` tokens of every column and starts from the (h, c) the previous window ended with,
detached, so gradients flow `bptt` steps back while the state carries the whole history. The carried
state is part of the checkpoint, so a resumed run continues exactly. With no `data.path` the model learns
the documentation texts that ship with Python (`pydoc_data`), so the command works offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lstmkit.config import RunConfig
from lstmkit.data.text import (
    LMCorpus,
    batchify,
    bits_per_char,
    default_corpus,
    get_window,
    num_windows,
    perplexity,
    read_corpus,
    split_text,
    tokenize,
    tokenize_open,
)
from lstmkit.data.vocab import Vocab
from lstmkit.errors import ConfigError, DataError
from lstmkit.lstm_config import LSTMConfig
from lstmkit.nn import dropout_mask
from lstmkit.tasks import Task

VOCAB_FILE = "vocab.json"
EVAL_COLUMNS = 10


@dataclass
class LMModelConfig:
    embedding_dim: int = 256
    lstm: LSTMConfig = field(default_factory=lambda: LSTMConfig(hidden_size=512, num_layers=2))
    dropout: float = 0.2  # on the embeddings, between layers and before the output layer
    locked_dropout: bool = False  # that dropout with one mask per window and column for all its steps (variational
    # dropout, Gal & Ghahramani 2016; AWD-LSTM's locked dropout); between layers as the LSTM's input_dropout
    embedding_dropout: float = 0.0  # drop whole words: each row of the embedding with this probability, for a batch
    # (Gal & Ghahramani 2016; AWD-LSTM's dropoute); the tied output layer keeps every row
    tie_weights: bool = False  # share the embedding with the output layer (needs embedding_dim == h's size)
    init_range: float = 0.0  # > 0: embedding and output weights uniform in ±init_range, output bias 0 (Zaremba et
    # al. 2014 use 0.1); 0: torch's defaults, whose N(0, 1) embedding makes large initial logits when tied


@dataclass
class LMDataConfig:
    path: str = ""  # a UTF-8 text file, a folder with ptb.{train,valid,test}.txt, or "" for the built-in corpus
    level: Literal["char", "word"] = "char"
    valid_fraction: float = 0.1  # the end of a single text, held out (nanoGPT's split)
    bptt: int = 128  # steps per window: how far back gradients flow
    num_words: int = 0  # vocabulary cap (0: every token of the training text)


class LanguageModel(nn.Module):
    """ids [L, B] -> logits [L, B, V]: Embedding -> LSTM -> Linear, time-major, state in and out."""

    def __init__(self, vocab_size: int, m: LMModelConfig) -> None:
        super().__init__()
        width = m.lstm.proj_size or m.lstm.hidden_size  # h's size
        if m.tie_weights and m.embedding_dim != width:
            raise ConfigError(f"model.tie_weights needs model.embedding_dim == model.hidden_size; got "
                              f"{m.embedding_dim} and {width}")
        if m.lstm.bidirectional:
            raise ConfigError("model.lstm.bidirectional: a language model predicts the next token from the past "
                              "only; use bidirectional=false")
        if not 0.0 <= m.embedding_dropout < 1.0:
            raise ConfigError(f"model.embedding_dropout must be a probability in [0, 1), got {m.embedding_dropout}")
        self.embedding = nn.Embedding(vocab_size, m.embedding_dim)
        self.drop = nn.Dropout(m.dropout)
        self.locked_dropout, self.embedding_dropout = m.locked_dropout, m.embedding_dropout
        if m.locked_dropout:
            if m.lstm.input_dropout:
                raise ConfigError("model.locked_dropout applies model.dropout to the LSTM's inputs itself; leave "
                                  "model.lstm.input_dropout at 0 (or locked_dropout false)")
            self.lstm = replace(m.lstm, input_dropout=m.dropout).build(m.embedding_dim)
        else:
            self.lstm = m.lstm.build(m.embedding_dim, dropout=m.dropout)
        self.head = nn.Linear(width, vocab_size)
        if m.tie_weights:  # Press & Wolf 2017, Inan et al. 2017: fewer parameters, better perplexity
            self.head.weight = self.embedding.weight
        if m.init_range < 0:
            raise ConfigError(f"model.init_range must be >= 0, got {m.init_range}")
        if m.init_range > 0:
            nn.init.uniform_(self.embedding.weight, -m.init_range, m.init_range)
            nn.init.uniform_(self.head.weight, -m.init_range, m.init_range)  # the same tensor when tied
            nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        weight = self.embedding.weight
        if self.training and self.embedding_dropout:  # whole words: one Bernoulli draw per vocabulary row
            weight = weight * dropout_mask(weight, (weight.shape[0], 1), self.embedding_dropout)
        embedded = F.embedding(ids, weight)
        if self.locked_dropout:  # the LSTM drops its inputs (input_dropout); its output: one mask per column
            output, state = self.lstm(embedded, state)  # [L, B, H]
            if self.training and self.drop.p:
                output = output * dropout_mask(output, output.shape[1:], self.drop.p)
            return self.head(output), state
        output, state = self.lstm(self.drop(embedded), state)
        return self.head(self.drop(output)), state


def _detach(state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
    return None if state is None else (state[0].detach(), state[1].detach())


class LMTask(Task):
    name = "lm"
    ModelConfig = LMModelConfig
    DataConfig = LMDataConfig
    metric = "loss"
    metric_mode = "min"
    count_unit = "tok"

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir)
        data = config.data
        if not 0 < data.valid_fraction < 1:
            raise ConfigError(f"data.valid_fraction must be in (0, 1), got {data.valid_fraction}")
        self.state: tuple[Tensor, Tensor] | None = None
        if run_dir is not None:
            self.vocab = Vocab.load(Path(run_dir) / VOCAB_FILE)
            return
        self.corpus = self.load_corpus()
        self.vocab = self.corpus.vocab
        self.train_data = batchify(self.corpus.train, config.train.batch_size, what="the training text")  # [T, B]
        self.valid_data = batchify(self.corpus.valid, EVAL_COLUMNS, what="the validation text")

    def load_corpus(self) -> LMCorpus:
        data = self.config.data
        path = Path(data.path).expanduser() if data.path else None
        if path is not None and path.is_dir():
            if data.level != "word":
                raise ConfigError(f"{path} is a folder (read as Penn Treebank); set data.level=word, or give a file")
            return LMCorpus.from_ptb(path)
        text = read_corpus(path) if path is not None else default_corpus()
        train_text, valid_text = split_text(text, data.valid_fraction)
        return LMCorpus.from_text(train_text, valid_text, data.level, num_words=data.num_words or None)

    def build_model(self) -> nn.Module:
        return LanguageModel(len(self.vocab), self.config.model)

    def save_artifacts(self, run_dir: Path) -> None:
        self.vocab.save(Path(run_dir) / VOCAB_FILE)

    # --- training: windows in order, state carried -----------------------------------------------------------

    def train_plan(self, epoch: int) -> list[int]:
        return list(range(num_windows(self.train_data, self.config.data.bptt)))

    def start_epoch(self, epoch: int, first_batch: int = 0) -> None:
        if first_batch == 0:
            self.state = None  # each epoch reads the columns from their start

    def make_batch(self, item: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
        if self.train_data.shape[1] % world:
            raise ConfigError(f"train.batch_size={self.train_data.shape[1]} must be divisible by the number of "
                              f"processes ({world})")
        x, y = get_window(self.train_data, item, self.config.data.bptt)
        share = self.train_data.shape[1] // world  # this process's columns
        return x[:, rank * share:(rank + 1) * share], y[:, rank * share:(rank + 1) * share]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        x, y = batch
        state = None if self.state is None else tuple(s.to(x.device) for s in self.state)
        logits, state = model(x, state)
        self.state = _detach(state)  # truncated BPTT: the state goes on, its gradient stops here
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()), y.numel()

    def state_tensors(self) -> dict[str, Tensor]:
        return {} if self.state is None else {"h": self.state[0], "c": self.state[1]}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.state = (tensors["h"], tensors["c"]) if "h" in tensors else None

    # --- evaluation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def loss_on(self, model: nn.Module, data: Tensor) -> float:
        """Mean cross-entropy (nats per token) over a batchified stream, the state carried across windows."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, count, state = 0.0, 0, None
        for i in range(num_windows(data, self.config.data.bptt)):
            x, y = (t.to(device) for t in get_window(data, i, self.config.data.bptt))
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        model.train(was_training)
        return total / count

    def metrics_from_loss(self, loss: float) -> dict[str, float]:
        metrics = {"loss": loss}
        if self.config.data.level == "char":
            metrics["bpc"] = bits_per_char(loss)
        else:
            metrics["perplexity"] = perplexity(loss)
        return metrics

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.metrics_from_loss(self.loss_on(model, self.valid_data))

    def evaluate_path(self, model: nn.Module, path: str) -> dict[str, Any]:
        tokens = tokenize(read_corpus(path), self.config.data.level)
        ids = torch.tensor(self.vocab.encode(tokens), dtype=torch.long)
        unknown = int((ids == self.vocab.unk_id).sum())
        data = batchify(ids, EVAL_COLUMNS, what=str(path))
        return {**self.metrics_from_loss(self.loss_on(model, data)), "tokens": len(tokens), "unknown_tokens": unknown}

    def held_out(self, split: str) -> Any:
        raise ConfigError("for a language model, pass the text to score with --data FILE")

    # --- what `lstmkit inspect` and the web page call ---------------------------------------------------

    def encode_text(self, text: str) -> tuple[list[str], list[int]]:
        """The tokens of `text` as this model reads them, and their ids (unknown tokens read as <unk>)."""
        tokens = tokenize_open(text, self.vocab.level)
        if not tokens:
            raise DataError("the text is empty; type at least one character or word")
        return tokens, self.vocab.encode(tokens)

    def predict_trace(self, model: nn.Module, gate_trace: Any, top: int = 5) -> dict[str, Any]:
        """The `top` most likely next tokens after the traced text, from the traced forward's last output."""
        logits = model.head(gate_trace.output[-1, 0]).float()
        logits[[self.vocab.pad_id, self.vocab.unk_id]] = float("-inf")
        probs = torch.softmax(logits, 0)
        values, ids = probs.topk(min(top, len(probs)))
        return {"next": [{"token": self.vocab.id_to_token(int(i)), "probability": float(p)}
                         for p, i in zip(values, ids, strict=True)]}
