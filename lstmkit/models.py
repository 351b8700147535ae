"""Models built on `lstmkit.LSTM` for the applications.

SequenceClassifier: token ids [B, T] (through an Embedding) or feature vectors [B, T, F] -> LSTM -> pooling
-> Dense. Two classes use one logit and a sigmoid, as the seed recipe's Dense(1, sigmoid); more use softmax.

Variable lengths without waste: batches are padded *after* each sequence (post-padding) and every row
carries its length. A unidirectional LSTM then runs on the padded tensor (torch's fused kernel, the fast
path) and pooling reads each row at its own valid steps only; padding after a sequence cannot change its
earlier states, so this is exact. A bidirectional LSTM would read the padding first in its reverse
direction, so it gets a PackedSequence instead (lstmkit's packed-row path).

Train steps of token models with one LSTM layer on the C kernel fuse the Embedding into the LSTM's input
projection (`lstm_cpu.embedded_lstm_layer`): W x is computed once per distinct word of the batch, not once
per step. On the IMDB seed model: 16 ms a step instead of 21 (2 cores).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lstmkit.nn import LSTM
from lstmkit.ops import lstm_cpu

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
        hidden_size: int,
        vocab_size: int | None = None,
        embedding_dim: int = 128,
        input_size: int | None = None,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        pooling: str = "last",
        backend: str = "auto",
        init: str = "torch",
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give vocab_size (token ids) or input_size (feature vectors), not both")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size else None
        lstm_input = embedding_dim if vocab_size else input_size
        self.lstm = LSTM(lstm_input, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                         dropout=dropout if num_layers > 1 else 0.0, backend=backend, proj_size=proj_size)
        width = self.lstm.output_state_size  # h's size: proj_size (LSTMP) or hidden_size
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        features = width * (2 if bidirectional else 1) * pooled_width(pooling)
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
                for gate in range(4):  # Keras makes the [H, 4H] kernel orthogonal; per gate block is the same idea
                    nn.init.orthogonal_(U[gate * H:(gate + 1) * H])
                if b_ih is not None:
                    b_ih.zero_()
                    b_hh.zero_()
                    b_ih[H:2 * H] = 1.0
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """inputs: [B, T] ids or [B, T, F] features, post-padded; lengths: [B] -> logits [B, 1 or C]."""
        if self._tokens_on_kernel(inputs, lengths):
            output = self._embedded_lstm(inputs, lengths)
            return self.head(self.dropout(pool(output, lengths, self.pooling, self.lstm.num_directions)))
        x = self.embedding(inputs) if self.embedding is not None else inputs  # [B, T, E]
        if self.word_dropout and self.training:
            # Whole steps (words) dropped, not single features: the model must not lean on any one word.
            keep = F.dropout(x.new_ones(x.shape[0], x.shape[1], 1), self.word_dropout, training=True)
            x = x * keep
        if self.lstm.bidirectional:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            output = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)[0]  # [B, T_max, 2H]
        else:
            output = self.lstm(x)[0]  # [B, T, H]; steps past each length are computed but never read
        return self.head(self.dropout(pool(output, lengths, self.pooling, self.lstm.num_directions)))

    def _tokens_on_kernel(self, inputs: Tensor, lengths: Tensor) -> bool:
        """Whether a train step takes `lstm_cpu.embedded_lstm_layer`: the Embedding and a one-layer LSTM fused on
        the C kernel (W x once per distinct word). It takes the place of the model's own `self.lstm(...)`
        call, so forward hooks on `self.lstm` do not see these steps. Elsewhere: the path `self.lstm` picks."""
        lstm = self.lstm
        if self.embedding is None or self.word_dropout or not (self.training and torch.is_grad_enabled()):
            return False
        if lstm.num_layers != 1 or lstm.proj_size or torch.is_autocast_enabled("cpu") or lstm_cpu._functorch_active():
            return False
        # Only where the LSTM itself would run this batch on the C kernel: the call `forward` would make of it.
        B, T = inputs.shape
        packed = lstm.bidirectional
        batch_sizes = None
        if packed:  # what pack_padded_sequence makes of these lengths
            batch_sizes = [n for n in (lengths.cpu().view(-1, 1) > torch.arange(T)).sum(0).tolist() if n]
        if lstm.path_for(B, len(batch_sizes) if packed else T, packed, True, batch_sizes=batch_sizes) != "cpu":
            return False
        weights = [w for d in range(lstm.num_directions) for w in lstm.layer_weights(0, d)[:2]]
        return lstm_cpu.supports(self.embedding.weight, *weights)

    def _embedded_lstm(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """The LSTM's output [B, T, D*H] for token ids [B, T] (post-padded), read only at each row's valid steps.

        As in `forward`: one direction runs over the padded batch (padding after a sequence cannot change its
        earlier states, and sorting and unpacking would cost more than the padded steps); two run packed."""
        B, T = inputs.shape
        H, D = self.lstm.hidden_size, self.lstm.num_directions
        directions = [self.lstm.kernel_weights(0, d)[:3] for d in range(D)]  # (W, U, b): no projection here
        zeros = self.embedding.weight.new_zeros(D, B, H)
        if D == 1:
            ids, batch_sizes = inputs.t().reshape(T * B), [B] * T  # time-major rows, as the LSTM's own layout
        else:
            packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
            ids, batch_sizes = packed.data, packed.batch_sizes.tolist()
        y, _, _ = lstm_cpu.embedded_lstm_layer(self.embedding.weight, ids, batch_sizes, zeros, zeros, directions,
                                               self.embedding.padding_idx)
        if D == 1:
            return y.view(T, B, H).transpose(0, 1)
        rows = PackedSequence(y, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return pad_packed_sequence(rows, batch_first=True)[0]
