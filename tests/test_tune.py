"""The measuring dispatch (`lstmkit.ops.tune`): its choice is a pure function of the cache and the call; the cache
file is checked, rewritten when damaged or foreign, and optional; a run keeps the paths it started with."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import bf16_tolerance, paths_pinned

import lstmkit
from lstmkit.ops import CallKind, lstm_cpu, tune

CALL = CallKind(device="cpu", dtype="float32", autocast="", train=True, batch=32, steps=100, input_size=128,
                hidden_size=64, proj_size=0, layers=1, bidirectional=False, packed=False, dropout=False, threads=2)


@pytest.fixture(autouse=True)
def _measuring(monkeypatch):
    """These tests are of the measuring itself: the suite may run with LSTMKIT_TUNE=0 or a path named."""
    monkeypatch.delenv("LSTMKIT_TUNE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


class FakeClock:
    """time.perf_counter for the tuner: each rehearsal of a path advances it by that path's cost."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.now, self.costs, self.runs = 0.0, costs, []

    def __call__(self) -> float:
        return self.now

    def rehearse(self, path: str) -> None:
        self.runs.append(path)
        if self.costs[path] is None:
            raise RuntimeError("this path failed")
        self.now += self.costs[path]


def test_measure_takes_the_fastest_and_stops_timing_clearly_slower_paths():
    clock = FakeClock({"vendor": 0.010, "cpu": 0.004, "torch": 0.030})
    times = tune.measure(["vendor", "cpu", "torch"], clock.rehearse, clock, repeats=3, budget=10)
    assert tune.fastest(times) == "cpu"
    assert times == pytest.approx({"vendor": 0.010, "cpu": 0.004, "torch": 0.030})
    # One untimed run each, then torch (7.5x the best) and vendor (2.5x) are dropped after the first timed round.
    assert clock.runs.count("torch") == 2 and clock.runs.count("vendor") == 2 and clock.runs.count("cpu") == 2
    close = FakeClock({"vendor": 0.010, "cpu": 0.009})
    tune.measure(["vendor", "cpu"], close.rehearse, close, repeats=3, budget=10)
    assert close.runs.count("vendor") == close.runs.count("cpu") == 4  # both within 2x: timed every round


def test_measure_stops_at_its_budget_and_skips_a_path_that_fails():
    clock = FakeClock({"vendor": 1.0, "cpu": 1.0, "torch": None})
    times = tune.measure(["vendor", "cpu", "torch"], clock.rehearse, clock, repeats=5, budget=2.5)
    assert times["torch"] == math.inf and tune.fastest(times) in ("vendor", "cpu")
    assert clock.runs.count("torch") == 1  # failed once, never run again
    assert clock.runs.count("vendor") == 2  # the untimed run and one timed round: then the budget was spent
    assert tune.fastest({"vendor": math.inf}) is None


def test_the_choice_is_measured_once_then_read_from_the_cache(tmp_path):
    clock = FakeClock({"vendor": 0.010, "cpu": 0.004, "torch": 0.030})
    first = tune.Tuner(tmp_path / "dispatch.json", clock)
    assert first.decide(CALL.key, ["vendor", "cpu", "torch"], "vendor", clock.rehearse) == "cpu"
    runs = len(clock.runs)
    assert first.decide(CALL.key, ["vendor", "cpu", "torch"], "vendor", clock.rehearse) == "cpu"
    assert len(clock.runs) == runs  # no second measurement in the process
    document = json.loads((tmp_path / "dispatch.json").read_text())
    assert document["machine"] == tune.machine() and document["choices"][CALL.key]["path"] == "cpu"
    # A new process (a new Tuner on the same file) reads it, whatever its clock would say now.
    never = FakeClock({"vendor": 0.001, "cpu": 1.0, "torch": 1.0})
    second = tune.Tuner(tmp_path / "dispatch.json", never)
    assert second.decide(CALL.key, ["vendor", "cpu", "torch"], "vendor", never.rehearse) == "cpu"
    assert never.runs == []
    # A cached path that cannot run this call (no C kernel now, say) is not returned: the call is measured.
    assert second.decide(CALL.key, ["vendor", "torch"], "torch", never.rehearse) == "vendor"
    assert second.decisions()[CALL.key] == "vendor"


def test_a_key_buckets_sizes_and_separates_what_changes_the_choice():
    same = CallKind(**{**CALL.__dict__, "batch": 29, "steps": 127, "input_size": 100})
    assert same.key == CALL.key  # 29 -> 32, 127 -> 128, 100 -> 128
    for change in ({"train": False}, {"autocast": "bfloat16"}, {"batch": 33}, {"threads": 1}, {"packed": True},
                   {"proj_size": 16}, {"layers": 2}, {"bidirectional": True}, {"dtype": "float64"}):
        assert CallKind(**{**CALL.__dict__, **change}).key != CALL.key, change


def test_pins_win_over_the_cache_and_a_star_entry_covers_every_kind(tmp_path):
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps({"format": tune.CACHE_FORMAT, "machine": tune.machine(),
                                "choices": {"*": {"path": "vendor"}}}))
    tuner = tune.Tuner(path, FakeClock({}))
    never = lambda p: pytest.fail("measured despite the cache")  # noqa: E731
    assert tuner.decide(CALL.key, ["vendor", "cpu", "torch"], "cpu", never) == "vendor"
    tuner.pin({CALL.key: "torch"})
    assert tuner.decide(CALL.key, ["vendor", "cpu", "torch"], "cpu", never) == "torch"
    tuner.unpin()
    assert tuner.decide(CALL.key, ["vendor", "cpu", "torch"], "cpu", never) == "vendor"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "machine": {"cpu": "another"},
                                                                "choices": {}}), json.dumps([1, 2])],
                         ids=["damaged", "foreign", "not-a-cache"])
def test_a_damaged_or_foreign_cache_is_ignored_with_one_warning_and_rewritten(tmp_path, content):
    path = tmp_path / "dispatch.json"
    path.write_text(content)
    clock = FakeClock({"vendor": 0.002, "cpu": 0.004})
    tuner = tune.Tuner(path, clock)
    with pytest.warns(RuntimeWarning, match="ignoring the dispatch cache") as caught:
        assert tuner.decide(CALL.key, ["vendor", "cpu"], "cpu", clock.rehearse) == "vendor"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    document = json.loads(path.read_text())
    assert document["machine"] == tune.machine() and document["choices"][CALL.key]["path"] == "vendor"


def test_an_unwritable_cache_keeps_the_choice_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = FakeClock({"vendor": 0.002, "cpu": 0.004})
    tuner = tune.Tuner(blocker / "tune" / "dispatch.json", clock)  # its folder cannot be made under a file
    with pytest.warns(RuntimeWarning, match="cannot write the dispatch cache"):
        assert tuner.decide(CALL.key, ["vendor", "cpu"], "cpu", clock.rehearse) == "vendor"
    runs = len(clock.runs)
    assert tuner.decide(CALL.key, ["vendor", "cpu"], "cpu", clock.rehearse) == "vendor"
    assert len(clock.runs) == runs


def test_tuning_off_and_distributed_runs_take_the_rule(tmp_path, monkeypatch):
    never = lambda p: pytest.fail("measured with tuning off")  # noqa: E731
    for variable, value in (("LSTMKIT_TUNE", "0"), ("WORLD_SIZE", "2")):
        with monkeypatch.context() as m:
            m.setenv(variable, value)
            tuner = tune.Tuner(tmp_path / f"{variable}.json")
            assert tuner.decide(CALL.key, ["vendor", "cpu"], "cpu", never) == "cpu"
            assert not (tmp_path / f"{variable}.json").exists()


def test_auto_rehearses_a_new_kind_once_without_touching_the_rng_or_the_gradients(tmp_path):
    model = lstmkit.LSTM(4, 6, num_layers=2, dropout=0.5, batch_first=True).train()
    x = torch.randn(3, 7, 4)
    with tune.using(tune.Tuner(tmp_path / "dispatch.json")) as tuner:
        state = torch.get_rng_state()
        tuner.pin({})
        rehearsed = []
        original = model._stack

        def counting(path, *args, **kwargs):
            rehearsed.append(path)
            return original(path, *args, **kwargs)

        model._stack = counting
        with torch.no_grad():
            model(x)
        first = len(rehearsed)
        own = "cpu" if lstm_cpu.available() else "torch"
        assert first > 1 and set(rehearsed) >= {"vendor", own}  # the candidates, then the call itself
        assert not torch.equal(torch.get_rng_state(), state)  # the real call's dropout drew from the generator...
        torch.set_rng_state(state)
        with torch.random.fork_rng():
            model._stack = original
            with torch.no_grad():
                expected = model(x)[0]
        model._stack = counting
        torch.set_rng_state(state)
        with torch.no_grad():
            again = model(x)[0]
        assert len(rehearsed) == first + 1  # ...and the kind is known now: one call, no rehearsal
        assert torch.equal(again, expected)  # the rehearsal drew nothing from it: the same masks as without one
        y = model(x)[0]  # a train step's kind: rehearsed with backward passes that leave .grad alone
        assert all(p.grad is None for p in model.parameters())
        y.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        assert CallKind  # noqa: B018 (the import documents what keys are made of)
        assert any(key.startswith("cpu|float32|-|train|B4|T8") for key in tuner.decisions())


@pytest.mark.skipif(not lstm_cpu.available(), reason=f"the C kernel is not available ({lstm_cpu.unavailable_reason()})")
def test_the_gemm_library_is_measured_once_and_every_choice_computes_the_same():
    a, b = torch.randn(70, 33), torch.randn(50, 33)
    expected = a.double() @ b.double().t()
    for how in lstm_cpu.GEMMS:
        if how == "onednn" and not lstm_cpu._onednn_available():
            continue
        bound = 1e-5 if how != "bf16" else 4 * 2.0**-8  # two operands rounded to bf16's 8-bit significand
        got = lstm_cpu.gemm_nt(a, b, how).double()
        assert ((got - expected).abs().max() / expected.abs().max()).item() < bound, how
    with paths_pinned("vendor") as tuner:
        tuner.unpin()
        assert lstm_cpu.gemm_choice(autocast=False) in ("mkl", "onednn")
        assert lstm_cpu.gemm_choice(autocast=True) in lstm_cpu.GEMMS
        assert {k for k in tuner.decisions() if k.startswith("gemm|")} == {
            f"gemm|float32|threads{torch.get_num_threads()}", f"gemm|autocast|threads{torch.get_num_threads()}"}


def test_lstmkit_tune_naming_a_path_takes_it_where_it_can_run(tmp_path, monkeypatch):
    never = lambda p: pytest.fail("measured with a path named")  # noqa: E731
    monkeypatch.setenv("LSTMKIT_TUNE", "torch")
    tuner = tune.Tuner(tmp_path / "dispatch.json")
    assert tuner.decide(CALL.key, ["vendor", "cpu", "torch"], "cpu", never) == "torch"
    assert tuner.decide("gemm|float32|threads2", ["mkl", "onednn"], "mkl", never) == "mkl"  # not a path there
    monkeypatch.setenv("LSTMKIT_TUNE", "cpu")
    assert tune.Tuner(tmp_path / "other.json").decide(CALL.key, ["vendor", "torch"], "vendor", never) == "vendor"


@pytest.mark.parametrize("path", ["vendor", "cpu", "torch"])
def test_bf16_autocast_forward_and_gradients_against_float64(path):
    """What "auto" may run under `torch.autocast("cpu", torch.bfloat16)` (and train.amp=bf16), path by path,
    against the float64 torch backend: outputs, final states and the gradients of the input and every weight."""
    if path == "cpu" and not lstm_cpu.available():
        pytest.skip(f"the C kernel is not available ({lstm_cpu.unavailable_reason()})")
    from conftest import relative_error

    torch.manual_seed(0)
    L, I, H, B, T = 2, 24, 32, 8, 30
    # "torch" is no candidate of "auto" where the kernel runs; the backend names it.
    model = lstmkit.LSTM(I, H, num_layers=L, batch_first=True, backend="torch" if path == "torch" else "auto")
    oracle = lstmkit.LSTM.from_torch(model.to_torch().double(), backend="torch")
    x = torch.randn(B, T, I)
    dy, dh, dc = torch.randn(B, T, H), torch.randn(L, B, H), torch.randn(L, B, H)
    results = []
    for module, dtype in ((model, torch.float32), (oracle, torch.float64)):
        leaf = x.to(dtype).detach().clone().requires_grad_(True)
        with paths_pinned(path) as tuner, torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.float32):
            y, (h_n, c_n) = module(leaf)
        paths = {v for k, v in tuner.decisions().items() if not k.startswith("gemm|")}
        assert module is oracle or path == "torch" or paths == {path}
        assert module is oracle or y.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
        ((y.double() * dy.double()).sum() + (h_n.double() * dh.double()).sum()
         + (c_n.double() * dc.double()).sum()).backward()
        results.append({"y": y, "h_n": h_n, "c_n": c_n, "dx": leaf.grad,
                        **{f"d{name}": p.grad for name, p in module.named_parameters()}})
    forward, backward = bf16_tolerance(L), 2 * bf16_tolerance(L)
    for name, value in results[0].items():
        assert value is not None and results[1][name] is not None, f"{path}: no {name}"
        bound = forward if name in ("y", "h_n", "c_n") else backward
        error = relative_error(value, results[1][name])
        assert error <= bound, f"{path}: {name} relative error {error:.3e} > {bound:.3e}"


def test_rehearsals_run_the_calls_own_length_up_to_a_cap_and_cut_large_layers():
    small = CallKind(**{**CALL.__dict__, "steps": 500})  # config a: 32 x 500, 128 -> 64
    assert small.rehearsal_steps() == 500 if tune.REHEARSAL_STEPS >= 500 else tune.REHEARSAL_STEPS
    assert CallKind(**{**CALL.__dict__, "steps": 5000}).rehearsal_steps() == tune.REHEARSAL_STEPS
    assert CallKind(**{**CALL.__dict__, "steps": 7}).rehearsal_steps() == 7
    large = CallKind(**{**CALL.__dict__, "batch": 64, "input_size": 256, "hidden_size": 256, "layers": 2,
                        "bidirectional": True, "steps": 1000})  # config f, longer
    assert large.flops_per_step() == 3 * 2 * 2 * 64 * 4 * 256 * ((256 + 256) + (512 + 256))
    assert tune.MIN_REHEARSAL_STEPS <= large.rehearsal_steps() < 1000
    assert large.rehearsal_steps() * large.flops_per_step() <= max(
        tune.REHEARSAL_FLOPS, tune.MIN_REHEARSAL_STEPS * large.flops_per_step())
