"""lstmkit: the textbook LSTM, a drop-in torch.nn.LSTM, and the tools around it."""

from lstmkit.introspect import GateTrace, LSTMTrace, trace
from lstmkit.nn import GATE_ORDER, LSTM, LSTMCell, pack_padded_sequence
from lstmkit.stream import LSTMStream

__version__ = "0.1.0"

__all__ = [
    "GATE_ORDER", "LSTM", "GateTrace", "LSTMCell", "LSTMStream", "LSTMTrace", "__version__", "pack_padded_sequence",
    "trace",
]
