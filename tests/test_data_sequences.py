"""Numeric sequences: .npz and .csv loading, their errors, and scikit-learn's digits read row by row."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmkit.data.sequences import load_digits_sequences, load_sequences
from lstmkit.errors import DataError


def test_npz_three_dims_integer_labels(tmp_path: Path) -> None:
    x = np.arange(4 * 3 * 2, dtype=np.float64).reshape(4, 3, 2)  # [N, T, F]
    np.savez(tmp_path / "s.npz", x=x, y=np.array([2, 0, 2, 1]))
    data = load_sequences(tmp_path / "s.npz")
    assert data.x.dtype == torch.float32 and data.x.shape == (4, 3, 2)
    assert torch.equal(data.x, torch.from_numpy(x.astype(np.float32)))
    assert data.label_names == ["0", "1", "2"] and data.labels == [2, 0, 2, 1]
    assert data.lengths is None and len(data) == 4


def test_npz_two_dims_string_labels_and_lengths(tmp_path: Path) -> None:
    x = np.array([[1, 2, 3], [4, 5, 0], [6, 0, 0]], dtype=np.int32)  # [N, T]: one feature per step
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["up", "down", "up"]), lengths=np.array([3, 2, 1]))
    data = load_sequences(tmp_path / "s.npz")
    assert data.x.shape == (3, 3, 1) and data.x[1, :, 0].tolist() == [4.0, 5.0, 0.0]
    assert data.label_names == ["down", "up"] and data.labels == [1, 0, 1]
    assert data.lengths.dtype == torch.int64 and data.lengths.tolist() == [3, 2, 1]
    # a trained model's label set fixes the indices; then one class alone is fine
    np.savez(tmp_path / "one.npz", x=x, y=np.array(["up", "up", "up"]))
    fixed = load_sequences(tmp_path / "one.npz", label_names=["up", "down"])
    assert fixed.labels == [0, 0, 0] and fixed.label_names == ["up", "down"]


def test_csv_rows_reshape_into_steps_of_features(tmp_path: Path) -> None:
    # label, then T*F = 6 values: steps (1, 2), (3, 4), (5, 6) with features=2
    (tmp_path / "s.csv").write_text("label,a,b,c,d,e,f\n1,1,2,3,4,5,6\n0,6,5,4,3,2,1\n\n1,0,0,0,0,0,1\n", "utf-8")
    data = load_sequences(tmp_path / "s.csv", features=2)
    assert data.x.shape == (3, 3, 2)
    assert data.x[0].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert data.labels == [1, 0, 1] and data.label_names == ["0", "1"]
    by_step = load_sequences(tmp_path / "s.csv")  # features=1: T = 6 steps of one value
    assert by_step.x.shape == (3, 6, 1)
    (tmp_path / "s.csv.gz").write_bytes(gzip.compress((tmp_path / "s.csv").read_bytes()))
    assert torch.equal(load_sequences(tmp_path / "s.csv.gz", features=3).x, data.x.reshape(3, 2, 3))


def _npz(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


X = np.zeros((3, 4, 2))
Y = np.array([0, 1, 0])


@pytest.mark.parametrize("arrays, message", [
    ({"inputs": X, "y": Y}, r"no array 'x' \(arrays present: 'inputs', 'y'\)"),
    ({"x": X}, r"no array 'y' \(arrays present: 'x'\)"),
    ({"x": np.zeros((3, 4, 2, 1)), "y": Y}, r"x must be \[N, T, F\] \(or \[N, T\]\), found shape \[3, 4, 2, 1\]"),
    ({"x": np.zeros(3), "y": Y}, r"found shape \[3\]"),
    ({"x": X, "y": Y[:, None]}, r"y must be \[N\], found shape \[3, 1\]"),
    ({"x": X, "y": np.array([0, 1])}, r"x has 3 sequences but y has 2 labels"),
    ({"x": np.zeros((0, 4, 2)), "y": np.zeros(0, dtype=int)}, r"no data"),
    ({"x": X, "y": np.array([1, 1, 1])}, r"every example has the label '1'"),
    ({"x": X, "y": np.array([0.5, 1, 0])}, r"labels y must be integers or strings"),
    ({"x": X, "y": Y, "lengths": np.array([4, 0, 2])}, r"lengths\[1\] = 0 is outside 1..T = 1..4"),
    ({"x": X, "y": Y, "lengths": np.array([4, 2])}, r"lengths must be \[N\] = \[3\] integers"),
    ({"x": np.array([["a", "b"]] * 3), "y": Y}, r"x must hold numbers"),
])
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_sequences(_npz(tmp_path, **arrays))
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)


def test_npz_non_finite_values_say_how_many_and_where(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 2))
    x[1, 2, 1] = np.nan
    x[2, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"2 values are NaN or infinite, the first at sequence 1, step 2, feature 1"):
        load_sequences(_npz(tmp_path, x=x, y=Y))


def test_npz_never_unpickles(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([[1.0], [2.0]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_sequences(tmp_path / "obj.npz")
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_sequences(tmp_path / "fake.npz")


@pytest.mark.parametrize("content, kwargs, message", [
    ("", {}, r"bad\.csv is empty"),
    ("label,a,b\n", {}, r"no sequences found"),
    ("0,1,2,3\n1,4,5\n", {}, r"line 2: 2 values, but line 1 has 3; every sequence must have the same length"),
    ("0,1,2,3\n1,4,5,6\n", {"features": 2}, r"3 values per row do not divide into steps of features=2"),
    ("0,1,2\n1,4,oops\n", {}, r"line 2: 'oops' is not a number"),
    ("0,1,nan\n1,4,5\n0,inf,1\n", {}, r"2 values are NaN or infinite, the first at line 1, step 1, feature 0"),
    ("3,1,2\n3,4,5\n", {}, r"every example has the label '3'"),
    ("0,1,2\n,4,5\n", {}, r"line 2: empty label"),
    ("0\n1\n", {}, r"line 1: a label but no values"),
    ("0,1,2\n2,4,5\n", {"label_names": ["0", "1"]}, r"line 2: label '2' is not one of the labels \['0', '1'\]"),
])
def test_csv_errors(tmp_path: Path, content: str, kwargs: dict, message: str) -> None:
    (tmp_path / "bad.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_sequences(tmp_path / "bad.csv", **kwargs)
    assert "bad.csv" in str(info.value) and "\n" not in str(info.value)


def test_bad_paths_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_sequences(tmp_path / "missing.npz")
    (tmp_path / "s.txt").write_text("0,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_sequences(tmp_path / "s.txt")
    with pytest.raises(ValueError, match="features must be a positive int"):
        load_sequences(tmp_path / "s.txt", features=0)
    (tmp_path / "latin1.csv").write_bytes(b"0,1\n1,2\n" + "caf\xe9,3\n".encode("latin1"))
    with pytest.raises(DataError, match=r"line 3 \(byte offset 11\): byte 0xe9 is not UTF-8"):
        load_sequences(tmp_path / "latin1.csv")


def test_digits_read_row_by_row() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is needed for the digits data set")
    data = load_digits_sequences()
    assert data.x.shape == (1797, 8, 8) and data.x.dtype == torch.float32  # [N, T, F]
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert data.label_names == [str(d) for d in range(10)] and sorted(set(data.labels)) == list(range(10))
    assert len(data.labels) == 1797 and data.lengths is None
    from sklearn.datasets import load_digits

    digits = load_digits()
    # step t of sequence n is row t of image n, scaled by 1/16
    assert torch.equal(data.x[5, 3], torch.tensor(digits.images[5, 3] / 16.0, dtype=torch.float32))
    assert data.labels[5] == int(digits.target[5])
