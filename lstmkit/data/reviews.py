"""Labelled text (IMDB and the like): read it from aclImdb folders or tarballs, CSV/TSV, JSON lines; split; download.

Every problem a user can fix is a DataError of one line: what was wrong, where (file, line), what to do.

Labels become indices into `label_names`:
    aclImdb folders/tarball   neg -> 0, pos -> 1             label_names ["neg", "pos"]
    integer labels            sorted by value: 0, 1 -> 0, 1  label_names ["0", "1"]
    other string labels       sorted by name                 label_names e.g. ["negative", "neutral", "positive"]
Give `label_names` (a trained model's) to fix the mapping instead; for aclImdb data and a model whose labels
are ["0", "1"] (trained on the 0/1 JSON lines), neg reads as "0" and pos as "1".
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmkit.data.vocab import HTML_BREAK
from lstmkit.errors import ConfigError, DataError

IMDB_LABELS = ["neg", "pos"]

FORMATS = ("imdb", "csv", "tsv", "jsonl")
_INTEGER = re.compile(r"[+-]?\d+")
# A review file of the aclImdb layout, in a folder or a tarball: <split>/<pos|neg>/<id>_<rating>.txt.
_REVIEW_NAME = re.compile(r"(\d+)_(\d+)\.txt")
_ICONV_HINT = "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT` (or -f cp1252)"


@dataclass
class LabelledTexts:
    """Texts and their labels; `labels[i]` indexes `label_names`. `source` names where they came from."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)


# reading bytes -------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """The whole file as text: gunzipped when it is gzip (by its magic bytes), UTF-8, byte-order mark dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: damaged gzip data ({error}); fetch or compress the file again") from None
    if not data.strip():
        raise DataError(f"{path} is empty; give a file with a header line and at least one example")
    return decode_utf8(data, str(path))


def decode_utf8(data: bytes, where: str) -> str:
    bom = 3 if data[:3] == b"\xef\xbb\xbf" else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(f"{where}, line {line} (byte offset {offset}): byte 0x{data[offset]:02x} is not UTF-8; "
                        f"{_ICONV_HINT}") from None


# labels --------------------------------------------------------------------------------------------------


def index_labels(
    raw: Sequence[str],
    label_names: Sequence[str] | None,
    source: str,
    where: Callable[[int], str],
    aliases: dict[str, str] | None = None,
) -> tuple[list[int], list[str]]:
    """Raw label strings -> (indices, label_names). `where(i)` says where example i is, for messages.

    Without `label_names`: integer labels sort by value, others by name, and one class alone is an error
    (nothing to learn). With them, the classes are fixed by the caller (say a trained model), a label
    outside them is an error, and a file with one class is fine (scoring positive reviews only, say).
    `aliases` map a raw label to a name it stands for when that name is in `label_names` ("pos" -> "1").
    """
    if label_names is None:
        unique = set(raw)
        if len(unique) < 2:
            only = f"the label {next(iter(unique))!r}" if unique else "no label"
            raise DataError(f"{source}: every example has {only}; a classifier needs at least two classes. "
                            "Check the label field, or add examples of the other class(es)")
        names = sorted(unique, key=int) if all(_INTEGER.fullmatch(u) for u in unique) else sorted(unique)
    else:
        names = [str(name) for name in label_names]
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataError(f"label_names must be at least two distinct names, not {names}")
    index = {name: i for i, name in enumerate(names)}
    for alias, name in (aliases or {}).items():
        if alias not in index and name in index:
            index[alias] = index[name]
    labels = []
    for i, label in enumerate(raw):
        j = index.get(label)
        if j is None:
            raise DataError(f"{where(i)}: label {label!r} is not one of the labels {names}; "
                            "fix the label or use a model trained with it")
        labels.append(j)
    return labels, names


def _label_string(value: object, where: str) -> str:
    # JSON labels: 1, "1", "pos" are all fine; 1.0 reads as "1"; true, null, 0.5, lists are not labels.
    if isinstance(value, str):
        label = value.strip()
    elif isinstance(value, int) and not isinstance(value, bool):
        label = str(value)
    elif isinstance(value, float) and value.is_integer():
        label = str(int(value))
    else:
        raise DataError(f"{where}: label {value!r} is not a string or an integer")
    if not label:
        raise DataError(f"{where}: empty label; every example needs one")
    return label


# readers: each returns (texts, raw labels, where(i)) ------------------------------------------------------

_Rows = tuple[list[str], list[str], Callable[[int], str]]


def _missing_field(where: str, kind: str, name: str, present: Sequence[str], option: str) -> DataError:
    listed = ", ".join(repr(p) for p in present) or "none"
    return DataError(f"{where}: no {kind} {name!r} ({kind}s present: {listed}); pass {option}= to use another")


def _read_delimited(path: Path, delimiter: str, text_field: str, label_field: str) -> _Rows:
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    # csv refuses fields over 128 KiB by default; lift that here so the max_chars check can speak instead.
    old_limit = csv.field_size_limit(2**31 - 1)
    texts, raw, lines = [], [], []
    try:
        header = [name.strip() for name in next(reader)]
        for field, option in ((text_field, "text_field"), (label_field, "label_field")):
            if field not in header:
                raise _missing_field(f"{path}, line 1", "column", field, header, option)
        ti, li = header.index(text_field), header.index(label_field)
        previous_line = reader.line_num
        for row in reader:
            line, previous_line = previous_line + 1, reader.line_num  # a quoted field may span lines
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}; "
                                f"quote texts that contain {delimiter!r} or line breaks")
            texts.append(row[ti])
            raw.append(_label_string(row[li], f"{path}, line {line}"))
            lines.append(line)
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: {error}; check the quoting") from None
    finally:
        csv.field_size_limit(old_limit)
    return texts, raw, lambda i: f"{path}, line {lines[i]}"


def _read_json_lines(path: Path, text_field: str, label_field: str) -> _Rows:
    content = read_text(path)
    if content.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(content)
        except json.JSONDecodeError as error:
            where = f"{path}, line {error.lineno}"
            raise DataError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
        numbered = [(f"{path}, item {i}", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for n, line in enumerate(content.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            try:
                numbered.append((f"{path}, line {n}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {n}: not valid JSON ({error.msg}, column {error.colno}); each line "
                                f'must be one object such as {{"{text_field}": "...", "{label_field}": 1}}') from None
    texts, raw, places = [], [], []
    for place, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"{place}: expected a JSON object, found {type(item).__name__}")
        for field, option in ((text_field, "text_field"), (label_field, "label_field")):
            if field not in item:
                raise _missing_field(place, "field", field, list(item), option)
        text = item[text_field]
        if not isinstance(text, str):
            raise DataError(f"{place}: {text_field!r} must be a string, found {type(text).__name__}")
        texts.append(text)
        raw.append(_label_string(item[label_field], place))
        places.append(place)
    return texts, raw, places.__getitem__


def _review_order(name: str) -> tuple:
    # aclImdb names are <id>_<rating>.txt; numeric order (2_3 before 10_1), like the shared JSON lines.
    match = _REVIEW_NAME.fullmatch(name)
    return (0, int(match[1]), int(match[2]), name) if match else (1, 0, 0, name)


def _imdb_split_dir(path: Path, split: str) -> Path:
    for candidate in (path, path / split, path / "aclImdb" / split):
        if (candidate / "pos").is_dir() or (candidate / "neg").is_dir():
            return candidate
    splits = sorted(p.name for p in path.iterdir() if p.is_dir() and ((p / "pos").is_dir() or (p / "neg").is_dir()))
    if splits:
        raise DataError(f"{path}: no split {split!r} (found: {', '.join(splits)}); choose one of those")
    raise DataError(f"{path} is a folder but not in aclImdb layout: expected pos/ and neg/ folders of .txt reviews "
                    f"(or {split}/pos/ and {split}/neg/ under the aclImdb root)")


def _read_imdb_dir(path: Path, split: str) -> _Rows:
    split_dir = _imdb_split_dir(path, split)
    texts, raw, files = [], [], []
    for label in IMDB_LABELS:
        folder = split_dir / label
        if not folder.is_dir():
            raise DataError(f"{split_dir}: no {label}/ folder; an aclImdb split has both pos/ and neg/")
        for file in sorted(folder.glob("*.txt"), key=lambda f: _review_order(f.name)):
            try:
                data = file.read_bytes()
            except OSError as error:
                raise DataError(f"cannot read {file}: {error.strerror or error}") from None
            texts.append(decode_utf8(data, str(file)))
            raw.append(label)
            files.append(str(file))
    return texts, raw, files.__getitem__


def _read_imdb_tarball(path: Path, split: str) -> _Rows:
    member_name = re.compile(rf"(?:^|/){re.escape(split)}/(pos|neg)/([^/]+\.txt)")
    found = []  # (label, order, member name, bytes)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            # Stream mode ("r|"): members in archive order, one pass, nothing extracted to disk.
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    match = member_name.search(member.name) if member.isfile() else None
                    if match is None:
                        continue
                    data = tar.extractfile(member).read()
                    found.append((match[1], _review_order(match[2]), member.name, data))
            # tarfile takes a file cut off between two members for a short archive; gzip's end marker and
            # CRC do not lie, so read on to them (EOFError / BadGzipFile for a partial download).
            while gzipped and stream.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{path}: not a readable .tar.gz ({error}); download it again (see lstmkit.data.download) or "
                        "unpack it and pass the aclImdb folder") from None
    if not found:
        raise DataError(f"{path}: no reviews of split {split!r} (members like aclImdb/{split}/pos/0_9.txt); "
                        "is this aclImdb_v1.tar.gz, and is the split name right?")
    found.sort(key=lambda item: (IMDB_LABELS.index(item[0]), item[1]))
    places = [f"{path}, member {name}" for _, _, name, _ in found]
    texts = [decode_utf8(data, place) for (_, _, _, data), place in zip(found, places, strict=True)]
    return texts, [label for label, *_ in found], places.__getitem__


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "imdb"
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "imdb"
    stem = name.removesuffix(".gz")
    for suffixes, kind in (((".csv",), "csv"), ((".tsv", ".tab"), "tsv"), ((".jsonl", ".ndjson", ".json"), "jsonl")):
        if stem.endswith(suffixes):
            return kind
    raise DataError(f"cannot tell the format of {path} from its name; name it .csv, .tsv, .jsonl (each optionally "
                    ".gz) or .tar.gz, give an aclImdb folder, or pass format= (one of: " + ", ".join(FORMATS) + ")")


# the loader ----------------------------------------------------------------------------------------------


def load_labelled_text(
    path: str | os.PathLike,
    *,
    text_field: str = "text",
    label_field: str = "label",
    format: str | None = None,
    split: str = "train",
    label_names: Sequence[str] | None = None,
    label_aliases: dict[str, str] | None = None,
    max_chars: int | None = 200_000,
) -> LabelledTexts:
    """Read labelled texts from an aclImdb folder or tarball, CSV, TSV or JSON lines (gzip'd or not).

    `format` is detected from the path when None: a folder or .tar.gz/.tgz is aclImdb (the root, then `split`
    picks train/ or test/, or a split folder holding pos/ and neg/), .csv, .tsv, .jsonl/.ndjson/.json (a .json
    holding one array of objects works too), each optionally .gz. `text_field`/`label_field` name the
    columns or JSON fields. Texts are returned as they are (tokenize them later); `max_chars=None` lifts the
    length limit. See the module docstring for how labels become indices; `label_aliases` map other spellings
    of a label to one of `label_names` (a run's display name to the label its training data wrote).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"not found: {path}; give a .csv/.tsv/.jsonl(.gz) file, an aclImdb folder or "
                        "aclImdb_v1.tar.gz (lstmkit.data.download.download_imdb fetches it)")
    kind = _detect_format(path) if format is None else format
    if kind not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {kind!r}")
    aliases = None
    if kind == "imdb":
        texts, raw, where = _read_imdb_dir(path, split) if path.is_dir() else _read_imdb_tarball(path, split)
        aliases = {"neg": "0", "pos": "1"}  # the 0/1 convention of the IMDB JSON lines and of Keras
    elif kind in ("csv", "tsv"):
        texts, raw, where = _read_delimited(path, "," if kind == "csv" else "\t", text_field, label_field)
    else:
        texts, raw, where = _read_json_lines(path, text_field, label_field)
    if not texts:
        raise DataError(f"{path}: no examples found; the file has no rows after its header/blank lines")
    for i, text in enumerate(texts):
        if not text.strip() or ("<" in text and not HTML_BREAK.sub(" ", text).strip()):
            raise DataError(f"{where(i)}: empty text; remove the example or fill in its text")
        if max_chars is not None and len(text) > max_chars:
            raise DataError(f"{where(i)}: text of {len(text):,} characters is over the limit of {max_chars:,}; "
                            "raise max_chars (or --max-chars) if it is meant to be that long")
    labels, names = index_labels(raw, label_names, str(path), where, (aliases or {}) | (label_aliases or {}))
    return LabelledTexts(texts, labels, names, source=str(path) if kind != "imdb" else f"{path} ({split})")


# splitting -----------------------------------------------------------------------------------------------


def train_validation_split(
    data: LabelledTexts, valid_size: int | float, seed: int, valid_max: int = 0
) -> tuple[LabelledTexts, LabelledTexts]:
    """Deterministic, stratified, shuffled split into (train, validation).

    `valid_size` is a count (int) or a fraction in (0, 1) (float); a fraction gives at least one example, and at
    most `valid_max` (0: no cap). Each class gives its share to validation (largest remainders make the total
    exact); both parts come back shuffled, as the same seed always gives.
    """
    n = len(data)
    if isinstance(valid_size, float):
        if not 0.0 < valid_size < 1.0:
            raise ConfigError(f"valid_size as a fraction must be in (0, 1), not {valid_size}")
        n_valid = max(1, round(valid_size * n))
        if valid_max:
            n_valid = min(n_valid, valid_max)
    elif isinstance(valid_size, int) and not isinstance(valid_size, bool):
        n_valid = valid_size
    else:
        raise ConfigError(f"valid_size must be an int (count) or a float (fraction), not {valid_size!r}")
    if not 1 <= n_valid <= n - 1:
        raise DataError(f"{data.source}: cannot split {n} examples with valid_size={valid_size} "
                        f"({n_valid} for validation); each part needs at least one example")
    labels = np.asarray(data.labels, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * (n_valid / n)
    take = np.floor(shares).astype(np.int64)
    for c in np.argsort(-(shares - take), kind="stable")[: n_valid - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    train_idx, valid_idx = [], []
    for label, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = rng.permutation(np.flatnonzero(labels == label))
        valid_idx.append(members[:k])
        train_idx.append(members[k:])
    train_order = rng.permutation(np.concatenate(train_idx)).tolist()
    valid_order = rng.permutation(np.concatenate(valid_idx)).tolist()

    def part(order: list[int], name: str) -> LabelledTexts:
        return LabelledTexts([data.texts[i] for i in order], [data.labels[i] for i in order], list(data.label_names),
                             source=f"{data.source} [{name}, seed {seed}]")

    return part(train_order, "train part"), part(valid_order, "validation part")
