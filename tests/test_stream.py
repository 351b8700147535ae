"""LSTMStream: token-by-token steps against the whole-sequence forward, and generation through it."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, random_lstm_configs
from test_lm import small, write_text

from lstmkit import LSTM
from lstmkit.sample import generate
from lstmkit.stream import LSTMStream
from lstmkit.tasks import open_run
from lstmkit.train import train_and_evaluate


@pytest.mark.parametrize("config", random_lstm_configs(12, seed=3, bidirectional=False),
                         ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_steps_equal_the_whole_sequence_forward_in_float64(config):
    config = dict(config)
    B, T, with_hx = config.pop("B"), config.pop("T"), config.pop("hx")
    config["batch_first"] = False  # a stream takes [B, I] per step whatever the module's layout
    lstm = LSTM(**config).double()
    x = torch.randn(T, B, config["input_size"], dtype=torch.float64)
    L, H = config["num_layers"], config["hidden_size"]
    hx = (torch.randn(L, B, config["proj_size"] or H, dtype=torch.float64),
          torch.randn(L, B, H, dtype=torch.float64)) if with_hx else None
    expected, (h_n, c_n) = lstm(x, hx)
    stream = LSTMStream(lstm, batch_size=B, hx=hx)
    assert_close(stream.steps(x), expected, "output")
    assert_close(stream.state[0], h_n, "h_n")
    assert_close(stream.state[1], c_n, "c_n")


def test_float32_steps_match_torch_nn_lstm_one_call_at_a_time():
    torch_lstm = torch.nn.LSTM(6, 10, num_layers=2, proj_size=4)
    stream = LSTMStream(LSTM.from_torch(torch_lstm), batch_size=3)
    state = None
    for _ in range(5):
        x = torch.randn(1, 3, 6)
        with torch.no_grad():
            expected, state = torch_lstm(x, state)
        assert_close(stream.step(x[0]), expected[0], "h_t")
    assert_close(stream.state[1], state[1], "c_t")


def test_buffers_are_reused_and_no_graph_is_built():
    lstm = LSTM(4, 8, num_layers=2)  # parameters require grad
    stream = LSTMStream(lstm)
    first = stream.step(torch.randn(1, 4, requires_grad=True))
    pointer, kept = first.data_ptr(), first.clone()
    second = stream.step(torch.randn(1, 4))
    assert second.data_ptr() == pointer, "a step should write into the same buffer, not allocate"
    assert not torch.equal(first, kept), "the returned view is documented to be overwritten by the next step"
    assert not second.requires_grad and second.grad_fn is None


def test_reset_and_refresh():
    lstm = LSTM(3, 5)
    stream = LSTMStream(lstm, batch_size=2)
    x = torch.randn(4, 2, 3)
    first = stream.steps(x)
    stream.reset()
    assert torch.equal(stream.steps(x), first)
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(2)
    stream.reset()
    assert torch.equal(stream.steps(x), first), "weights are copied when the stream is made"
    stream.refresh()
    stream.reset()
    assert_close(stream.steps(x), lstm(x)[0], "after refresh")


def test_bad_use_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="bidirectional LSTM cannot stream"):
        LSTMStream(LSTM(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match="from_torch"):
        LSTMStream(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LSTMStream(LSTM(3, 4), batch_size=0)
    stream = LSTMStream(LSTM(3, 4, num_layers=2), batch_size=2)
    with pytest.raises(ValueError, match=r"step needs x of shape \[2, 3\]"):
        stream.step(torch.randn(3))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        stream.reset((torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="steps needs x of shape"):
        stream.steps(torch.randn(5, 1, 3))


class CalledOneTokenAtATime(torch.nn.Module):
    """The same language model, hidden behind a wrapper so that generation calls it per token."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, ids, state=None):
        return self.inner(ids, state)


def test_generation_through_the_stream_equals_calling_the_model(tmp_path):
    config = small(write_text(tmp_path / "verse.txt"), "model.num_layers=2", "train.epochs=2")
    assert train_and_evaluate(config, tmp_path / "run", quiet=True).status == "completed"
    task, model = open_run(tmp_path / "run")
    for kwargs in ({"greedy": True}, {"temperature": 1.3, "seed": 5}, {"top_k": 3, "seed": 2}):
        streamed = "".join(generate(model, task.vocab, "the c", 80, **kwargs))
        called = "".join(generate(CalledOneTokenAtATime(model), task.vocab, "the c", 80, **kwargs))
        assert streamed == called, kwargs


@pytest.mark.parametrize("batch", [1, 3])
def test_writing_the_input_buffer_in_place_equals_passing_x(batch):
    lstm = LSTM(4, 6, num_layers=2)
    table, ids = torch.randn(10, 4), torch.tensor([3, 7, 1][:batch])
    by_argument, in_place = LSTMStream(lstm, batch), LSTMStream(lstm, batch)
    for _ in range(3):
        expected = by_argument.step(table[ids]).clone()
        torch.index_select(table, 0, ids, out=in_place.input_buffer)
        assert torch.equal(in_place.step(), expected)
