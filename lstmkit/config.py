"""Configuration: one dataclass per concern, defaults in code, presets as small diffs, type-checked overrides.

A run's configuration is a `RunConfig`: the task's name plus three sections, `train` (this module's
`TrainConfig`, the same for every task), and the task's own `model` and `data` dataclasses. Presets
(`lstmkit/configs/*.toml`) and `--set section.key=value` overrides are applied on top of the defaults;
an unknown key is an error that names the closest valid key. The resolved configuration is saved as
`config.json` in every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lstmkit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class TrainConfig:
    """How to train, whatever the task."""

    epochs: int = 5
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay over all steps, after the warm-up
    warmup_steps: int = 0
    clip_norm: float = 0.0  # max global gradient norm; 0 turns clipping off
    eval_every: int = 0  # evaluate every N steps as well as after each epoch; 0: after each epoch only
    checkpoint_every: int = 200  # steps between resume checkpoints (also at each evaluation and at the end)
    patience: int = 0  # early stopping: evaluations without improvement before stopping; 0: never stop early
    # The weights a run keeps (model.safetensors): "best", those of its best validation metric; "last", those of
    # its last evaluation (at the end). "last" where the validation part cannot tell the checkpoints apart: FSDD's
    # validation speakers are its training speakers, ~99.5% from epoch 8 on, so "best" kept an early epoch.
    keep: Literal["best", "last"] = "best"
    amp: Literal["off", "bf16"] = "off"  # bf16 autocast (CPU AMX / GPU tensor cores)
    seed: int = 0
    minutes: float = 0.0  # wall-clock budget for this invocation; 0: none
    log_every: int = 10  # steps between progress-bar updates of loss and tokens/s
    device: str = "auto"  # "auto": the process's GPU when there is one, else the CPU
    # Classifiers: train this many models one after another (seeds seed, seed+1, ...; all on the validation
    # split of `seed`) and predict with the mean of their class probabilities. See lstmkit/ensemble.py.
    members: int = 1


@dataclass
class RunConfig:
    task: str
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Any = None  # the task's model dataclass
    data: Any = None  # the task's data dataclass
    presets: str = ""  # the presets applied, for the record


SECTIONS = ("train", "model", "data")

# Range checks by option name, in whatever section: a value can type-check and still mean nothing.
_AT_LEAST_ONE = {"epochs", "batch_size", "checkpoint_every", "log_every", "hidden_size", "num_layers",
                 "embedding_dim", "T", "batches_per_epoch", "maxlen", "max_chars", "features", "bptt", "members"}
_NON_NEGATIVE = {"num_words", "proj_size", "lr", "weight_decay", "warmup_steps", "clip_norm", "eval_every", "patience",
                 "minutes", "test_size"}
_POSITIVE = {"valid_size", "cell_clip"}
_BELOW_ONE = {"dropout", "word_dropout", "momentum", "recurrent_dropout", "weight_drop",
              "zoneout_h", "zoneout_c"}  # in [0, 1)


def _check_range(key: str, name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if name in _AT_LEAST_ONE and value < 1:
        raise ConfigError(f"{key} must be at least 1; got {value}")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key} must be 0 or more; got {value}")
    if name in _POSITIVE and value <= 0:
        raise ConfigError(f"{key} must be more than 0; got {value}")
    if name in _BELOW_ONE and not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1); got {value}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from JSON, TOML or a command-line string) as type `tp`, or a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # from --set: "1.0,0.5" or "[1.0, 0.5]"
            value = [v for v in value.strip().strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list; got {value!r}")
        return [coerce(v.strip() if isinstance(v, str) else v, item, key) for v in value]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer; got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number; got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number; got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number; got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string; got {value!r}")
    raise ConfigError(f"{key}: unsupported option type {_type_name(tp)}")


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown configuration key {key!r}{hint}")


def _keys(prefix: str, target: Any) -> list[str]:
    keys = []
    for f in dataclasses.fields(target):
        inner = getattr(target, f.name)
        keys += _keys(f"{prefix}.{f.name}", inner) if dataclasses.is_dataclass(inner) else [f"{prefix}.{f.name}"]
    return keys


def all_keys(config: RunConfig) -> list[str]:
    return [key for section in SECTIONS for key in _keys(section, getattr(config, section))]


def resolve(config: RunConfig, key: str) -> tuple[Any, str]:
    """The dataclass that holds `key` ("section.name" or "section.nested.name") and the field's name.

    A name a section lacks is looked up in its nested sections (the model's `lstm`): run directories and presets
    from before the LSTM's options were nested say `model.hidden_size` for `model.lstm.hidden_size`."""
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        raise _unknown_key(key, all_keys(config))
    target = getattr(config, section)
    *path, name = rest.split(".")
    for part in path:
        if part not in _field_types(type(target)) or not dataclasses.is_dataclass(getattr(target, part)):
            raise _unknown_key(key, all_keys(config))
        target = getattr(target, part)
    if name not in _field_types(type(target)):
        nested = [getattr(target, f.name) for f in dataclasses.fields(target)
                  if dataclasses.is_dataclass(getattr(target, f.name))]
        holders = [inner for inner in nested if name in _field_types(type(inner))]
        if not holders:
            raise _unknown_key(key, all_keys(config))
        target = holders[0]
    if dataclasses.is_dataclass(getattr(target, name)):
        raise ConfigError(f"{key} is a section of options, not one option: set its keys ({key}.hidden_size=...)")
    return target, name


def set_value(config: RunConfig, key: str, value: Any) -> None:
    """Set `section.name` (or `section.nested.name`) on `config`, type-checked."""
    target, name = resolve(config, key)
    typed = coerce(value, _field_types(type(target))[name], key)
    _check_range(key, name, typed)
    setattr(target, name, typed)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` strings (the command line's `--set`)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects section.key=value, e.g. train.lr=3e-4; got {item!r}")
        set_value(config, key.strip(), value.strip())
    return config


def apply_mapping(config: RunConfig, mapping: dict[str, Any], source: str) -> RunConfig:
    """Apply a nested {section: {key: value}} mapping (a preset or a saved config)."""
    for section, values in mapping.items():
        if section in ("task", "presets", "lstmkit_version", "format", "format_version"):
            continue
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        for key, value in _flatten(section, values):
            try:
                set_value(config, key, value)
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
    return config


def _flatten(prefix: str, values: dict[str, Any]) -> list[tuple[str, Any]]:
    """{name: value or {name: ...}} -> [("prefix.name", value), ("prefix.nested.name", value), ...]."""
    items = []
    for name, value in values.items():
        items += _flatten(f"{prefix}.{name}", value) if isinstance(value, dict) else [(f"{prefix}.{name}", value)]
    return items


def mapping_keys(mapping: dict[str, Any]) -> set[str]:
    """The `section.key` names a nested {section: {key: value}} mapping (a preset) sets."""
    return {key for section, values in mapping.items() if section in SECTIONS and isinstance(values, dict)
            for key, _ in _flatten(section, values)}


def get_value(config: RunConfig, key: str) -> Any:
    target, name = resolve(config, key)
    return getattr(target, name)


def preset_names() -> list[str]:
    files = resources.files("lstmkit.configs").iterdir()
    return sorted(p.name[: -len(".toml")] for p in files if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (`lstmkit/configs/NAME.toml`) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        candidate = resources.files("lstmkit.configs") / f"{name_or_path}.toml"
        if not candidate.is_file():
            raise _unknown_preset(name_or_path)
        text = candidate.read_text(encoding="utf-8")
        source = f"preset {name_or_path!r}"
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from None


def _unknown_preset(name: str) -> ConfigError:
    names = preset_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"no preset named {name!r}{hint} (presets: {', '.join(names)}; or pass a .toml path)")


def to_dict(config: RunConfig) -> dict[str, Any]:
    return {
        "task": config.task,
        **{section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS},
        "presets": config.presets,
    }


def to_json(config: RunConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)
