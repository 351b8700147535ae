"""Models built on `lstmkit.LSTM` for the applications.

SequenceClassifier: token ids [B, T] (through an Embedding) or feature vectors [B, T, F] -> LSTM -> pooling
-> Dense. Two classes use one logit and a sigmoid, as the seed recipe's Dense(1, sigmoid); more use softmax.

Variable lengths without waste: batches are padded *after* each sequence (post-padding) and every row
carries its length. A unidirectional LSTM then runs on the padded tensor (torch's fused kernel, the fast
path) and pooling reads each row at its own valid steps only; padding after a sequence cannot change its
earlier states, so this is exact. A bidirectional LSTM would read the padding first in its reverse
direction, so it gets a PackedSequence instead (lstmkit's packed-row path).

Token models call `LSTM.embedded(embedding, ids)`: the LSTM of the Embedding's output, which fuses the two on
the C kernel where that pays (see there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit.lstm_config import LSTMConfig
from lstmkit.nn import shift_forget_bias

POOLINGS = ("last", "mean", "max", "max_mean")


def pooled_width(how: str) -> int:
    """How many times the LSTM's output width `pool` returns: 2 for max_mean (both, side by side), else 1."""
    return 2 if how == "max_mean" else 1


def pool(output: Tensor, lengths: Tensor, how: str, num_directions: int) -> Tensor:
    """output: [B, T, D*H] (valid steps first), lengths: [B] -> [B, D*H] ([B, 2*D*H] for max_mean)."""
    B, T, width = output.shape
    lengths = lengths.to(output.device)
    if how == "last":
        last = output[torch.arange(B, device=output.device), lengths - 1]  # each row's own last step
        if num_directions == 1:
            return last
        H = width // 2
        # The reverse direction's summary of the whole sequence is its output at step 0.
        return torch.cat([last[:, :H], output[:, 0, H:]], dim=1)
    valid = (torch.arange(T, device=output.device)[None, :] < lengths[:, None]).unsqueeze(2)  # [B, T, 1]
    if how == "mean":
        return (output * valid).sum(dim=1) / lengths[:, None].to(output.dtype)
    if how == "max":
        return output.masked_fill(~valid, float("-inf")).max(dim=1).values
    if how == "max_mean":  # the strongest feature of each unit and its average, as ULMFiT's concat pooling
        return torch.cat([pool(output, lengths, "max", num_directions), pool(output, lengths, "mean", num_directions)],
                         dim=1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")


class SequenceClassifier(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        lstm: LSTMConfig | None = None,
        vocab_size: int | None = None,
        embedding_dim: int = 128,
        input_size: int | None = None,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        pooling: str = "last",
        init: str = "torch",
        **lstm_options: object,
    ) -> None:
        """lstm: the LSTM's configuration; or its fields as keyword arguments (hidden_size=64, num_layers=2, ...)."""
        super().__init__()
        if lstm is None:
            lstm = LSTMConfig(**lstm_options)
        elif lstm_options:
            raise TypeError(f"give lstm= or the LSTM's options ({', '.join(lstm_options)}), not both")
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give vocab_size (token ids) or input_size (feature vectors), not both")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size else None
        lstm_input = embedding_dim if vocab_size else input_size
        self.lstm = lstm.build(lstm_input, dropout=dropout, batch_first=True)
        width = self.lstm.output_state_size  # h's size: proj_size (LSTMP) or hidden_size
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        features = width * self.lstm.num_directions * pooled_width(pooling)
        self.head = nn.Linear(features, 1 if num_classes == 2 else num_classes)
        pool(torch.zeros(1, 1, width * self.lstm.num_directions), torch.ones(1, dtype=torch.long),
             pooling, self.lstm.num_directions)  # checks `pooling` now rather than at the first batch
        if init == "keras":
            self.keras_initialization()
        elif init != "torch":
            raise ValueError(f"init must be 'torch' or 'keras', got {init!r}")

    @torch.no_grad()
    def keras_initialization(self) -> None:
        """The initialisation of the seed's Keras layers: Embedding U(-0.05, 0.05); LSTM kernel Glorot-uniform,
        recurrent kernel orthogonal, biases 0 but the forget gate's 1 (unit_forget_bias); Dense Glorot-uniform.

        Orthogonal recurrent weights keep ||U h|| = ||h||, which helps a signal survive hundreds of steps."""
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        H = self.lstm.hidden_size
        for layer in range(self.lstm.num_layers):
            for direction in range(self.lstm.num_directions):
                W, U, b_ih, b_hh, R = self.lstm.layer_weights(layer, direction)
                nn.init.xavier_uniform_(W)
                if R is not None:  # proj_size: Keras has no projection; Glorot-uniform, as for its other kernels
                    nn.init.xavier_uniform_(R)
                for gate in range(self.lstm.gates):  # Keras makes the [H, 4H] kernel orthogonal; per gate block
                    nn.init.orthogonal_(U[gate * H:(gate + 1) * H])
                if b_ih is not None:
                    b_ih.zero_()
                    b_hh.zero_()
                    shift_forget_bias(b_ih, H, self.lstm.coupled_gates, 1.0)  # Keras' unit_forget_bias
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """inputs: [B, T] ids or [B, T, F] features, post-padded; lengths: [B] -> logits [B, 1 or C]."""
        lstm = self.lstm
        tokens = self.embedding is not None and not (self.word_dropout and self.training)
        # ids, which the LSTM embeds itself (`LSTM.embedded`); or the vectors [B, T, E]
        x = inputs if tokens or self.embedding is None else self.embedding(inputs)
        if self.word_dropout and self.training and self.embedding is not None:
            # Whole steps (words) dropped, not single features: the model must not lean on any one word.
            keep = F.dropout(x.new_ones(x.shape[0], x.shape[1], 1), self.word_dropout, training=True)
            x = x * keep
        if lstm.bidirectional:
            x = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output = lstm.embedded(self.embedding, x)[0] if tokens else lstm(x)[0]
        if lstm.bidirectional:
            output = pad_packed_sequence(output, batch_first=True)[0]  # [B, T_max, 2H]
        # one direction: [B, T, H]; steps past each length are computed but never read
        return self.head(self.dropout(pool(output, lengths, self.pooling, lstm.num_directions)))
