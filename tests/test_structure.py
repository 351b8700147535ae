"""The structure issue 16 asked for: imports point one way, one LSTM configuration nested in every task's, and run
directories saved before the nesting (flat model keys in config.json) still load, evaluate and resume exactly."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
from test_train import assert_bit_identical, final_weights, tiny_config

import lstmkit
from lstmkit import config as cfg
from lstmkit import ops, runs
from lstmkit.ensemble import open_run
from lstmkit.errors import ConfigError
from lstmkit.lstm_config import LSTMConfig
from lstmkit.tasks import default_config, load_run_config, task_classes
from lstmkit.train import config_for_resume, train_and_evaluate

PACKAGE = Path(lstmkit.__file__).parent
# The model keys each task's config.json held before the LSTM's options were nested (lstmkit at issue 14).
FLAT_LSTM_KEYS = {"adding": ("hidden_size", "num_layers", "backend"),
                  "lm": ("hidden_size", "num_layers", "backend"),
                  "sentiment": ("hidden_size", "num_layers", "bidirectional", "backend", "proj_size"),
                  "sequences": ("hidden_size", "num_layers", "bidirectional", "backend", "proj_size")}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_imports_point_one_way():
    """ensemble sits above train and the tasks; only the LSTM module and the stream reach the kernels."""
    kernels = {f"lstmkit.ops.{name}" for name in ("lstm_cpu", "lstm_op", "lstm_torch", "lstm_vendor", "cell")}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        imported = imports_of(path)
        if relative not in ("ensemble.py", "cli.py") and not relative.startswith("web/"):
            assert "lstmkit.ensemble" not in imported, f"{relative} imports lstmkit.ensemble, a layer above it"
        if not relative.startswith("ops/") and relative not in ("nn.py", "stream.py"):
            assert not imported & kernels, f"{relative} reaches past lstmkit.LSTM into {imported & kernels}"


def test_every_task_nests_the_one_lstm_configuration():
    for name, task in task_classes().items():
        fields = typing.get_type_hints(task.ModelConfig)
        assert fields.get("lstm") is LSTMConfig, f"{name}'s model configuration has no lstm: LSTMConfig"
        own = {f.name for f in dataclasses.fields(task.ModelConfig)}
        copied = own & {f.name for f in dataclasses.fields(LSTMConfig)}
        assert not copied, f"{name}'s model configuration repeats the LSTM's {copied}"
    assert typing.get_args(typing.get_type_hints(LSTMConfig)["backend"]) == ops.BACKENDS


def test_nested_and_flat_keys_name_the_same_option():
    config = default_config("sentiment")
    cfg.apply_overrides(config, ["model.lstm.hidden_size=12", "model.num_layers=3", "model.lstm.peephole=true",
                                 "model.forget_bias=1.0,0.5,0", "model.cell_clip=4"])
    lstm = config.model.lstm
    assert (lstm.hidden_size, lstm.num_layers, lstm.peephole, lstm.forget_bias, lstm.cell_clip) == (
        12, 3, True, [1.0, 0.5, 0.0], 4.0)
    assert cfg.get_value(config, "model.hidden_size") == cfg.get_value(config, "model.lstm.hidden_size") == 12
    assert "model.lstm.peephole" in cfg.all_keys(config)
    assert cfg.mapping_keys({"model": {"lstm": {"hidden_size": 3}, "dropout": 0.1}}) == {
        "model.lstm.hidden_size", "model.dropout"}
    with pytest.raises(ConfigError, match="key 'model.lstm.hiden_size'.*'model.lstm.hidden_size'"):
        cfg.set_value(config, "model.lstm.hiden_size", 3)
    with pytest.raises(ConfigError, match="model.lstm is a section"):
        cfg.set_value(config, "model.lstm", 3)
    with pytest.raises(ConfigError, match="model.cell_clip must be more than 0"):
        cfg.set_value(config, "model.cell_clip", 0)
    saved = json.loads(cfg.to_json(config))
    assert saved["model"]["lstm"]["hidden_size"] == 12 and "hidden_size" not in saved["model"]


def flatten_to_the_old_format(run_dir: Path, task: str) -> None:
    """Rewrite a run's config.json as lstmkit wrote it before the nesting: the LSTM's keys in the model section,
    and none of the options added since."""
    path = run_dir / runs.CONFIG_FILE
    saved = json.loads(path.read_text())
    nested = saved["model"].pop("lstm")
    saved["model"].update({key: nested[key] for key in FLAT_LSTM_KEYS[task]})
    path.write_text(json.dumps(saved, indent=2))


def test_an_old_format_run_directory_loads_evaluates_and_resumes_exactly(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path / "full", quiet=True)
    train_and_evaluate(tiny_config("train.epochs=1"), tmp_path / "old", quiet=True)
    _, model = open_run(tmp_path / "old")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flatten_to_the_old_format(tmp_path / "old", "adding")
    assert "lstm" not in json.loads((tmp_path / "old" / runs.CONFIG_FILE).read_text())["model"]
    config = load_run_config(tmp_path / "old")
    assert config.model.lstm.hidden_size == 8
    task, model = open_run(tmp_path / "old")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert task.evaluate(model)["mse"] >= 0
    result = train_and_evaluate(config_for_resume(tmp_path / "old", epochs=3), tmp_path / "old", resume=True,
                                quiet=True)
    assert result.status == "completed"
    assert_bit_identical(final_weights(tmp_path / "old"), final_weights(tmp_path / "full"))


@pytest.mark.parametrize("task", ["lm", "sentiment", "sequences"])
def test_old_format_configurations_of_every_task_load(tmp_path, task):
    config = default_config(task)
    saved = cfg.to_dict(config)
    nested = saved["model"].pop("lstm")
    saved["model"].update({key: nested[key] for key in FLAT_LSTM_KEYS[task]}, hidden_size=24)
    run = tmp_path / task
    run.mkdir()
    runs.write_config(run, saved)
    loaded = load_run_config(run)
    assert loaded.model.lstm.hidden_size == 24
    assert dataclasses.asdict(loaded.model.lstm) == {**dataclasses.asdict(config.model.lstm), "hidden_size": 24}
