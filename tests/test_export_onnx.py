"""ONNX export: the standard LSTM operator in onnxruntime against lstmkit, fp32 parity and the int8 cost."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_close
from export_runs import make_run, write_reviews, write_sequences, write_text

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install 'lstmkit[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'lstmkit[export]'")

from lstmkit.cli import main  # noqa: E402
from lstmkit.export import export_run  # noqa: E402
from lstmkit.export.onnx_run import open_onnx  # noqa: E402
from lstmkit.tasks.classify import collate  # noqa: E402


def padded_batch(examples, extra: int = 0):
    """Post-padded inputs of the examples, `extra` padding steps beyond the longest, and their lengths."""
    inputs, lengths = collate(examples)
    if extra:
        pad = inputs.new_zeros(inputs.shape[0], extra, *inputs.shape[2:])
        inputs = torch.cat([inputs, pad], dim=1)
    return inputs, lengths


def token_examples(generator, n: int, vocab_size: int, lengths=None):
    lengths = lengths or torch.randint(1, 20, (n,), generator=generator).tolist()
    return [torch.randint(2, vocab_size, (length,), generator=generator) for length in lengths]


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "max_mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_token_classifier_matches_onnxruntime_on_variable_and_padded_batches(tmp_path, pooling, bidirectional,
                                                                            num_layers):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run, task, model = make_run(tmp_path, "sentiment", [
        "model.embedding_dim=7", "model.hidden_size=9", f"model.num_layers={num_layers}",
        f"model.bidirectional={str(bidirectional).lower()}", f"model.pooling={pooling}"], data, scale=3.0)
    export_run(run, "onnx", tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")), full_check=True)
    _, session_model = open_onnx(tmp_path / "model.onnx")
    generator = torch.Generator().manual_seed(num_layers)
    vocab_size = model.embedding.num_embeddings
    batches = {
        "variable lengths, 1 and the longest included": padded_batch(token_examples(generator, 6, vocab_size,
                                                                                    [1, 19, 4, 11, 19, 2])),
        "padded past the longest": padded_batch(token_examples(generator, 5, vocab_size), extra=6),
        "one row of one step": padded_batch(token_examples(generator, 1, vocab_size, [1])),
        "equal lengths": padded_batch(token_examples(generator, 4, vocab_size, [13] * 4)),
    }
    for name, (inputs, lengths) in batches.items():
        with torch.no_grad():
            expected = model(inputs, lengths)
        assert_close(session_model(inputs, lengths), expected, f"logits, {name}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_feature_classifier_of_three_classes_matches_onnxruntime(tmp_path, bidirectional):
    data = write_sequences(tmp_path / "seq.npz")
    run, task, model = make_run(tmp_path, "sequences", [
        "model.hidden_size=8", "model.num_layers=2", f"model.bidirectional={str(bidirectional).lower()}",
        "model.pooling=mean"], data, scale=2.0)
    export_run(run, "onnx", tmp_path / "model.onnx")
    _, session_model = open_onnx(tmp_path / "model.onnx")
    inputs, lengths = padded_batch(task.valid_examples[:8], extra=2)
    with torch.no_grad():
        expected = model(inputs, lengths)
    assert expected.shape == (8, 3)
    assert_close(session_model(inputs, lengths), expected, "logits of features")


@pytest.mark.parametrize("num_layers,tied", [(1, False), (2, True), (3, False)])
def test_language_model_matches_whole_and_streamed_step_by_step(tmp_path, num_layers, tied):
    text = write_text(tmp_path / "text.txt")
    size = 12
    run, task, model = make_run(tmp_path, "lm", [
        f"model.embedding_dim={size}", f"model.hidden_size={size}", f"model.num_layers={num_layers}",
        f"model.tie_weights={str(tied).lower()}"], text, scale=2.0)
    export_run(run, "onnx", tmp_path / "lm.onnx")
    _, session_model = open_onnx(tmp_path / "lm.onnx")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(task.vocab), (17, 3), generator=generator)
    state = tuple(torch.randn(num_layers, 3, size, generator=generator) for _ in range(2))
    with torch.no_grad():
        logits, (h_n, c_n) = model(ids, state)
    got, (got_h, got_c) = session_model(ids, state)
    assert_close(got, logits, "logits")
    assert_close(got_h, h_n, "h_n")
    assert_close(got_c, c_n, "c_n")
    # The graph is also the step: one token at a time, the state carried, gives the same logits and state
    streamed, carried = [], state
    for t in range(ids.shape[0]):
        step_logits, carried = session_model(ids[t:t + 1], carried)
        streamed.append(step_logits)
    assert_close(torch.cat(streamed), logits, "streamed logits")
    assert_close(carried[1], c_n, "streamed c_n")


def test_the_exported_graph_is_the_standard_lstm_operator_with_dynamic_axes(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run, _, _ = make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=5", "model.num_layers=2",
                                                 "model.bidirectional=true"], data)
    export_run(run, "onnx", tmp_path / "model.onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    lstms = [node for node in proto.graph.node if node.op_type == "LSTM"]
    assert len(lstms) == 2 and all(node.domain == "" for node in lstms)
    assert all(node.input[4] for node in lstms), "sequence_lens must feed every layer"
    assert {a.name: a.s for a in lstms[0].attribute}["direction"] == b"bidirectional"
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time"]
    metadata = {p.key for p in proto.metadata_props}
    assert {"lstmkit.file/config.json", "lstmkit.file/vocab.json", "lstmkit.file/labels.json"} <= metadata


def test_proj_size_is_one_line_naming_the_feature(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run, _, _ = make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=6", "model.proj_size=3"],
                         data)
    result = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0 and "proj_size=3" in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.onnx*")), "nothing may be left behind"
