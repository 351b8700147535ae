"""NumPy float64 oracle: the textbook LSTM forward and hand-written BPTT (tests and checks only)."""

from lstmkit.reference.gradcheck import check_bptt, numerical_gradient, random_lstm_problem, relative_error
from lstmkit.reference.lstm_numpy import LSTMCache, lstm_backward, lstm_forward, sigmoid

__all__ = [
    "LSTMCache",
    "check_bptt",
    "lstm_backward",
    "lstm_forward",
    "numerical_gradient",
    "random_lstm_problem",
    "relative_error",
    "sigmoid",
]
