"""The adding problem as a training task: generated data, so the engine can be exercised anywhere.

See `lstmkit.longrange` for the problem itself. Every batch is generated from (seed, epoch, index), so a
resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lstmkit.config import RunConfig
from lstmkit.errors import ConfigError
from lstmkit.longrange import SequenceRegressor, adding_problem
from lstmkit.lstm_config import LSTMConfig
from lstmkit.tasks import Task


@dataclass
class AddingModelConfig:
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    dropout: float = 0.0  # between the LSTM's layers


@dataclass
class AddingDataConfig:
    T: int = 100  # sequence length
    batches_per_epoch: int = 100
    valid_size: int = 1000


class AddingTask(Task):
    name = "adding"
    ModelConfig = AddingModelConfig
    DataConfig = AddingDataConfig
    metric = "mse"
    metric_mode = "min"
    count_unit = "seq"

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir)
        data = config.data
        if data.T < 2:
            raise ConfigError(f"data.T must be >= 2 for the adding problem, got {data.T}")
        if data.batches_per_epoch < 1 or data.valid_size < 1:
            raise ConfigError("data.batches_per_epoch and data.valid_size must be >= 1")
        seed = config.train.seed
        self.valid_x, self.valid_y = adding_problem(data.valid_size, data.T, torch.Generator().manual_seed(seed + 7919))

    def build_model(self) -> nn.Module:
        m = self.config.model
        if m.lstm.bidirectional:
            raise ConfigError("model.lstm.bidirectional: the adding problem reads its answer from the last step's "
                              "state, which a reverse direction does not end at; use bidirectional=false")
        lstm = m.lstm.build(2, dropout=m.dropout, batch_first=True)
        return SequenceRegressor(lstm, lstm.output_state_size)

    def train_plan(self, epoch: int) -> list[int]:
        return list(range(self.config.data.batches_per_epoch))

    def make_batch(self, item: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size = self.config.train.batch_size
        if batch_size % world:
            raise ConfigError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world})")
        epoch = self._epoch
        generator = torch.Generator().manual_seed(((self.config.train.seed * 1_000_003) + epoch) * 1_000_003 + item)
        x, y = adding_problem(batch_size, self.config.data.T, generator)
        share = batch_size // world  # this process's contiguous slice of the global batch
        return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]

    def start_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self._epoch = epoch

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y), len(y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        mse = nn.functional.mse_loss(model(self.valid_x).float(), self.valid_y).item()
        return {"mse": mse, "loss": mse}
