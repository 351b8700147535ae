"""Numeric sequences to classify: [N, T, F] arrays from .npz or .csv, and scikit-learn's digits read row by row.

    .npz   x: [N, T, F] (or [N, T], one feature per step), y: [N] integer or string labels,
           optional lengths: [N] (real steps per sequence, 1..T; the rest is padding)
    .csv   one sequence per row: label,v1,v2,...,v_{T*F}, read as T steps of `features` values each
           (row-major: v1..vF is step 1); an optional header line is skipped

Labels become indices into `label_names` as for text (see lstmkit.data.reviews.index_labels): integer
labels sort by value, so digits 0..9 keep their value as index.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lstmkit.data.reviews import index_labels, read_text
from lstmkit.errors import DataError


@dataclass
class NumericSequences:
    """x: [N, T, F] float32; labels[i] indexes label_names; lengths: [N] int64, or None when all are T."""

    x: torch.Tensor
    labels: list[int]
    label_names: list[str]
    lengths: torch.Tensor | None = None
    source: str = ""

    def __len__(self) -> int:
        return self.x.shape[0]


def _check_finite(x: np.ndarray, source: str, row_name) -> None:
    bad = ~np.isfinite(x)  # [N, T, F]
    if bad.any():
        n, t, f = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{source}: {int(bad.sum())} values are NaN or infinite, the first at {row_name(n)}, "
                        f"step {t}, feature {f}; fill or drop them before training")


def _label_strings(y: np.ndarray, source: str) -> list[str]:
    # Integer (or integral float) labels read as their value; strings as they are.
    if y.dtype.kind in "iu":
        return [str(v) for v in y.tolist()]
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            raise DataError(f"{source}: labels y must be integers or strings, found non-integer floats")
        return [str(int(v)) for v in y.tolist()]
    if y.dtype.kind == "U":
        return [v.strip() for v in y.tolist()]
    raise DataError(f"{source}: labels y must be integers or strings, not dtype {y.dtype}")


def _load_npz(path: Path, label_names: Sequence[str] | None) -> NumericSequences:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            present = list(arrays.keys())
            missing = [key for key in ("x", "y") if key not in present]
            if missing:
                raise DataError(f"{path}: no array {' or '.join(map(repr, missing))} (arrays present: "
                                f"{', '.join(map(repr, present)) or 'none'}); save with np.savez(path, x=..., y=...)")
            x, y = arrays["x"], arrays["y"]
            lengths = arrays["lengths"] if "lengths" in present else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        # ValueError: object (pickled) arrays, which we never load; OSError/BadZipFile: not an .npz at all.
        raise DataError(f"{path}: not a readable .npz of numeric arrays ({error})") from None
    source = str(path)
    if x.ndim == 2:
        x = x[:, :, None]  # [N, T] -> [N, T, 1]
    if x.ndim != 3:
        raise DataError(f"{source}: x must be [N, T, F] (or [N, T]), found shape {list(x.shape)}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: x must hold numbers, not dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{source}: y must be [N], found shape {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{source}: x has {x.shape[0]} sequences but y has {y.shape[0]} labels")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{source}: no data (x has shape {list(x.shape)})")
    x = x.astype(np.float32)
    _check_finite(x, source, lambda n: f"sequence {n}")
    lengths_t = None
    if lengths is not None:
        if lengths.shape != (x.shape[0],) or lengths.dtype.kind not in "iu":
            raise DataError(f"{source}: lengths must be [N] = [{x.shape[0]}] integers, "
                            f"found shape {list(lengths.shape)} dtype {lengths.dtype}")
        if lengths.min() < 1 or lengths.max() > x.shape[1]:
            bad = int(np.flatnonzero((lengths < 1) | (lengths > x.shape[1]))[0])
            raise DataError(f"{source}: lengths[{bad}] = {int(lengths[bad])} is outside 1..T = 1..{x.shape[1]}")
        lengths_t = torch.from_numpy(lengths.astype(np.int64))
    raw = _label_strings(y, source)
    labels, names = index_labels(raw, label_names, source, lambda i: f"{source}, y[{i}]")
    return NumericSequences(torch.from_numpy(x), labels, names, lengths_t, source)


def _load_csv(path: Path, features: int, label_names: Sequence[str] | None) -> NumericSequences:
    rows, raw, lines = [], [], []
    header_seen = False
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(cell) for cell in row[1:]]
            except ValueError:
                if not rows and not header_seen and not any(_is_number(cell) for cell in row[1:]):
                    header_seen = True  # a header line: names, not numbers
                    continue
                bad = next(cell for cell in row[1:] if not _is_number(cell))
                raise DataError(f"{path}, line {line}: {bad!r} is not a number; each row is label,v1,v2,...") from None
            if not values:
                raise DataError(f"{path}, line {line}: a label but no values; each row is label,v1,v2,...")
            if rows and len(values) != len(rows[0]):
                raise DataError(f"{path}, line {line}: {len(values)} values, but line {lines[0]} has "
                                f"{len(rows[0])}; every sequence must have the same length")
            rows.append(values)
            raw.append(row[0].strip())
            lines.append(line)
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: {error}") from None
    if not rows:
        raise DataError(f"{path}: no sequences found; each row is label,v1,v2,...")
    if len(rows[0]) % features != 0:
        raise DataError(f"{path}: {len(rows[0])} values per row do not divide into steps of features={features}; "
                        "pass the right number of features per step")
    empty_label = next((i for i, label in enumerate(raw) if not label), None)
    if empty_label is not None:
        raise DataError(f"{path}, line {lines[empty_label]}: empty label; the first value of a row is its label")
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1, features)  # [N, T, F]
    _check_finite(x, str(path), lambda n: f"line {lines[n]}")
    labels, names = index_labels(raw, label_names, str(path), lambda i: f"{path}, line {lines[i]}")
    return NumericSequences(torch.from_numpy(x), labels, names, None, str(path))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_sequences(
    path: str | os.PathLike, *, features: int = 1, label_names: Sequence[str] | None = None
) -> NumericSequences:
    """Read labelled numeric sequences from .npz or .csv (.csv.gz too); see the module docstring for the layouts.

    `features` (CSV only) is F, the number of values per step. `label_names` fixes the classes (a trained
    model's); a label outside them is then an error, and one class alone is allowed.
    """
    path = Path(path)
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"features must be a positive int, not {features!r}")
    if not path.exists():
        raise DataError(f"not found: {path}; give an .npz (arrays x, y) or a .csv (rows label,v1,v2,...)")
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path, label_names)
    if name.endswith((".csv", ".csv.gz")):
        return _load_csv(path, features, label_names)
    raise DataError(f"cannot tell the format of {path} from its name; use .npz (arrays x, y) or .csv")


def load_digits_sequences() -> NumericSequences:
    """scikit-learn's 1797 handwritten digits (8x8 pixels, 0..16) read row by row: x [1797, 8, 8] in [0, 1].

    Each image is a sequence of T = 8 rows with F = 8 pixel values each; labels 0..9.
    """
    try:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    except ImportError:
        raise DataError("the digits data set comes with scikit-learn: pip install 'scikit-learn>=1.3'") from None
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32))  # [1797, 8, 8] = [N, T, F]
    labels = [int(v) for v in digits.target]
    return NumericSequences(x, labels, [str(d) for d in range(10)], None, "scikit-learn digits (8x8, row by row)")
