"""Text to ids (tokenizer, Vocab, pad_sequences) and labelled-text loading, splitting and downloading."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from lstmkit.data.download import download_imdb
from lstmkit.data.reviews import LabelledTexts, load_labelled_text, train_validation_split
from lstmkit.data.vocab import PAD, UNK, Vocab, pad_sequences, tokenize_words
from lstmkit.errors import ConfigError, DataError

REAL_IMDB = Path(__file__).resolve().parents[2] / "shared/data/imdb/imdb_train.jsonl.gz"

REVIEWS = {  # (split, label) -> {file name: text}
    ("train", "pos"): {"0_9.txt": "A great film.<br /><br />Loved it!", "10_7.txt": "Good acting, fine plot.",
                       "2_8.txt": "It's well-made."},
    ("train", "neg"): {"1_1.txt": "Awful. Don't watch.", "3_2.txt": "Boring and too long."},
    ("test", "pos"): {"5_10.txt": "Brilliant!"},
    ("test", "neg"): {"4_3.txt": "Dull."},
}


# tokenizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, tokens", [
    ("Hello World", ["hello", "world"]),
    ("A film.<br /><br />The END", ["a", "film", ".", "the", "end"]),
    ("one<br/>two<BR>three<Br  />four", ["one", "two", "three", "four"]),
    ("Wow!!! Really?", ["wow", "!", "!", "!", "really", "?"]),
    ("I don't think it's bad", ["i", "don't", "think", "it's", "bad"]),
    ("Don’t", ["don't"]),
    ("a well-made, low-budget film", ["a", "well-made", ",", "low-budget", "film"]),
    ("rated 10/10 in 1999", ["rated", "10", "/", "10", "in", "1999"]),
    ("'quoted' -- dash", ["'", "quoted", "'", "-", "-", "dash"]),
    ("(great)", ["(", "great", ")"]),
    ("  \t ", []),
])
def test_tokenize_words(text: str, tokens: list[str]) -> None:
    assert tokenize_words(text) == tokens


# Vocab -------------------------------------------------------------------------------------------------


def test_vocab_build_orders_by_count_then_token_and_reserves_specials() -> None:
    vocab = Vocab.build([["b", "a", "c", "a"], ["c", "a", "d"]], num_words=None)
    # a:3, c:2, then the ties b:1, d:1 in token order
    assert vocab.tokens == [PAD, UNK, "a", "c", "b", "d"]
    assert vocab.token_to_id(PAD) == 0 and vocab.token_to_id(UNK) == 1
    assert vocab.encode(["a", "zzz", "d"]) == [2, 1, 5]
    assert vocab.decode([2, 1, 5]) == ["a", UNK, "d"]
    assert vocab.decode([0, 2, 0], skip_pad=True) == ["a"]
    assert "c" in vocab and "zzz" not in vocab
    assert vocab.id_to_token(3) == "c"
    with pytest.raises(IndexError, match="outside this vocabulary"):
        vocab.id_to_token(6)


@pytest.mark.parametrize("num_words", [2, 3, 5, 8])
def test_vocab_cap_counts_the_specials(num_words: int) -> None:
    texts = [[f"w{i}"] * (20 - i) for i in range(12)]  # 12 distinct tokens, distinct counts
    vocab = Vocab.build(texts, num_words=num_words)
    assert len(vocab) == num_words
    assert vocab.tokens[2:] == [f"w{i}" for i in range(num_words - 2)]  # the most frequent kept
    ids = vocab.encode([t for text in texts for t in text] + ["never-seen"])
    assert max(ids) < num_words and min(ids) >= 1


def test_vocab_min_freq_specials_in_text_and_bad_arguments() -> None:
    vocab = Vocab.build([["a", "a", "b", PAD, UNK]], num_words=100, min_freq=2)
    assert vocab.tokens == [PAD, UNK, "a"]  # b seen once; special tokens in the text keep their fixed ids
    eos = Vocab.build([["x"]], specials=(PAD, UNK, "<eos>"))
    assert eos.tokens == [PAD, UNK, "<eos>", "x"] and eos.specials == [PAD, UNK, "<eos>"]
    with pytest.raises(ValueError, match="no room"):
        Vocab.build([["a"]], num_words=1)
    with pytest.raises(ValueError, match="specials must start"):
        Vocab.build([["a"]], specials=(UNK, PAD))


def test_vocab_json_round_trip_word_and_char(tmp_path: Path) -> None:
    words = Vocab.build([tokenize_words("Ça va? Très bien, très bien!")], num_words=7)
    words.save(tmp_path / "vocab.json")
    raw = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert raw["format"] == "lstmkit.vocab" and raw["version"] == 1 and raw["level"] == "word"
    assert "très" in (tmp_path / "vocab.json").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == words and loaded.tokens == words.tokens and len(loaded) == 7

    chars = Vocab.build([list("hello world")], num_words=None, level="char")
    chars.save(tmp_path / "chars.json")
    loaded = Vocab.load(tmp_path / "chars.json")
    assert loaded.level == "char" and loaded == chars
    assert "".join(loaded.decode(loaded.encode("hello"))) == "hello"


def _damaged(data: dict) -> dict:
    return {"format": "lstmkit.vocab", "version": 1, "level": "word", "specials": [PAD, UNK],
            "tokens": [PAD, UNK, "a"]} | data


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps(_damaged({"format": "something.else"})), "not an lstmkit vocabulary"),
    (json.dumps(_damaged({"version": 2})), "version 2 is not supported"),
    (json.dumps(_damaged({"tokens": [PAD, UNK, "a", "b", "a"]})), "'a' appears twice"),
    (json.dumps(_damaged({"tokens": ["a", PAD, UNK]})), "first tokens must be the specials"),
    (json.dumps(_damaged({"specials": [UNK]})), "'specials' must be a list starting with"),
    (json.dumps(_damaged({"tokens": "abc"})), "'tokens' must be a list"),
    (json.dumps(_damaged({"level": "char", "tokens": [PAD, UNK, "ab"]})), "single characters"),
])
def test_vocab_load_damaged(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        Vocab.load(path)
    assert str(path) in str(info.value)


def test_vocab_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocabulary file not found"):
        Vocab.load(tmp_path / "nope.json")


# pad_sequences -----------------------------------------------------------------------------------------

SEQS = [[1, 2, 3, 4, 5], [6, 7], [8]]


@pytest.mark.parametrize("padding, truncating, ids, lengths", [
    ("pre", "pre", [[2, 3, 4, 5], [0, 0, 6, 7], [0, 0, 0, 8]], [4, 2, 1]),
    ("post", "pre", [[2, 3, 4, 5], [6, 7, 0, 0], [8, 0, 0, 0]], [4, 2, 1]),
    ("pre", "post", [[1, 2, 3, 4], [0, 0, 6, 7], [0, 0, 0, 8]], [4, 2, 1]),
    ("post", "post", [[1, 2, 3, 4], [6, 7, 0, 0], [8, 0, 0, 0]], [4, 2, 1]),
])
def test_pad_sequences(padding: str, truncating: str, ids: list, lengths: list) -> None:
    got, got_lengths = pad_sequences(SEQS, maxlen=4, padding=padding, truncating=truncating)
    assert got.dtype == torch.int64 and got_lengths.dtype == torch.int64
    assert torch.equal(got, torch.tensor(ids))
    assert torch.equal(got_lengths, torch.tensor(lengths))


def test_pad_sequences_defaults_value_and_errors() -> None:
    got, lengths = pad_sequences(SEQS)  # maxlen None: the longest; Keras defaults pre/pre
    assert torch.equal(got, torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 6, 7], [0, 0, 0, 0, 8]]))
    assert lengths.tolist() == [5, 2, 1]
    got, _ = pad_sequences([[3]], maxlen=3, padding="post", value=-1)
    assert got.tolist() == [[3, -1, -1]]
    with pytest.raises(DataError, match="sequence 1 is empty"):
        pad_sequences([[1], []], maxlen=3)
    with pytest.raises(DataError, match="no sequences"):
        pad_sequences([], maxlen=3)
    with pytest.raises(ValueError, match="padding"):
        pad_sequences(SEQS, maxlen=3, padding="middle")
    with pytest.raises(ValueError, match="truncating"):
        pad_sequences(SEQS, maxlen=3, truncating="both")
    with pytest.raises(ValueError, match="maxlen"):
        pad_sequences(SEQS, maxlen=0)


# loaders -----------------------------------------------------------------------------------------------


def _write_acl_imdb(root: Path) -> Path:
    for (split, label), files in REVIEWS.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled", encoding="utf-8")
    return root / "aclImdb"


def _write_tarball(path: Path, reviews: dict = REVIEWS, extra: dict | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = {f"aclImdb/{split}/{label}/{name}": text.encode("utf-8")
                   for (split, label), files in reviews.items() for name, text in files.items()}
        members["aclImdb/README"] = b"readme"
        members["aclImdb/train/unsup/0_0.txt"] = b"unlabelled"
        for name, data in (members | (extra or {})).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# neg first, numeric id order within a class (2_8 before 10_7)
TRAIN_TEXTS = ["Awful. Don't watch.", "Boring and too long.", "A great film.<br /><br />Loved it!",
               "It's well-made.", "Good acting, fine plot."]
TRAIN_LABELS = [0, 0, 1, 1, 1]


def test_load_acl_imdb_folder_root_and_split(tmp_path: Path) -> None:
    root = _write_acl_imdb(tmp_path)
    data = load_labelled_text(root)
    assert data.label_names == ["neg", "pos"]
    assert data.texts == TRAIN_TEXTS and data.labels == TRAIN_LABELS
    test = load_labelled_text(root, split="test")
    assert test.texts == ["Dull.", "Brilliant!"] and test.labels == [0, 1]
    assert load_labelled_text(root / "train").texts == TRAIN_TEXTS  # a split folder holding pos/ and neg/
    assert load_labelled_text(tmp_path).texts == TRAIN_TEXTS  # the folder the tarball was unpacked into
    with pytest.raises(DataError, match="no split 'valid' .found: test, train"):
        load_labelled_text(root, split="valid")


def test_load_acl_imdb_tarball(tmp_path: Path) -> None:
    tarball = _write_tarball(tmp_path / "aclImdb_v1.tar.gz")
    data = load_labelled_text(tarball)
    assert data.texts == TRAIN_TEXTS and data.labels == TRAIN_LABELS and data.label_names == ["neg", "pos"]
    test = load_labelled_text(tarball, split="test")
    assert test.texts == ["Dull.", "Brilliant!"] and test.labels == [0, 1]
    # a model trained on the 0/1 JSON lines reads aclImdb's neg/pos as 0/1
    as_numbers = load_labelled_text(tarball, label_names=["0", "1"])
    assert as_numbers.labels == TRAIN_LABELS and as_numbers.label_names == ["0", "1"]


def test_load_acl_imdb_tarball_errors(tmp_path: Path) -> None:
    tarball = _write_tarball(tmp_path / "aclImdb_v1.tar.gz")
    with pytest.raises(DataError, match="no reviews of split 'dev'"):
        load_labelled_text(tarball, split="dev")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        load_labelled_text(truncated)
    latin1_review = {"aclImdb/train/pos/7_9.txt": "Caf\xe9 scene".encode("latin1")}
    latin1 = _write_tarball(tmp_path / "latin1.tgz", extra=latin1_review)
    with pytest.raises(DataError, match=r"member aclImdb/train/pos/7_9.txt, line 1 \(byte offset 3\).*iconv"):
        load_labelled_text(latin1)


def test_load_csv_tsv_jsonl_and_gzip(tmp_path: Path) -> None:
    rows = [("A fine, \"quoted\" film", "pos"), ("Line one\nline two", "neg"), ("Tab\there", "pos")]
    with (tmp_path / "r.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("label", "text"), *[(label, text) for text, label in rows]])
    with (tmp_path / "r.tsv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows([("text", "label"), *rows])
    lines = "".join(json.dumps({"text": t, "label": lab, "id": i}) + "\n" for i, (t, lab) in enumerate(rows))
    (tmp_path / "r.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(lines.encode("utf-8")))
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress((tmp_path / "r.csv").read_bytes()))
    for name in ("r.csv", "r.tsv", "r.jsonl", "r.jsonl.gz", "r.csv.gz"):
        data = load_labelled_text(tmp_path / name)
        assert data.texts == [text for text, _ in rows], name
        assert data.label_names == ["neg", "pos"] and data.labels == [1, 0, 1], name


def test_load_custom_fields_integer_and_multiclass_labels(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("review,sentiment\ngood,1\nbad,0\nfine,1\n", encoding="utf-8")
    data = load_labelled_text(tmp_path / "a.csv", text_field="review", label_field="sentiment")
    assert data.label_names == ["0", "1"] and data.labels == [1, 0, 1]
    # integers sort by value, not as strings ("10" after "2"); JSON 1 and "1" are the same label
    lines = [{"body": "x", "stars": 10}, {"body": "y", "stars": 2}, {"body": "z", "stars": "1"},
             {"body": "w", "stars": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(item) for item in lines), encoding="utf-8")
    data = load_labelled_text(tmp_path / "b.jsonl", text_field="body", label_field="stars")
    assert data.label_names == ["1", "2", "10"] and data.labels == [2, 1, 0, 1]
    # Excel's byte-order mark must not become part of the first column's name
    (tmp_path / "c.csv").write_text("text,label\na,neutral\nb,positive\nc,negative\n", encoding="utf-8-sig")
    data = load_labelled_text(tmp_path / "c.csv")
    assert data.label_names == ["negative", "neutral", "positive"] and data.labels == [1, 2, 0]
    # a .json array works too, and the format can be forced for an unusual name
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a", "label": 0}, {"text": "b", "label": 1}]), "utf-8")
    assert load_labelled_text(tmp_path / "d.json").labels == [0, 1]
    (tmp_path / "e.txt").write_text("text\tlabel\na\t0\nb\t1\n", encoding="utf-8")
    assert load_labelled_text(tmp_path / "e.txt", format="tsv").texts == ["a", "b"]


def _bad(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("empty.csv", "", {}, r"empty\.csv is empty"),
    ("blank.jsonl", "\n \n", {}, r"blank\.jsonl is empty"),
    ("header.csv", "text,label\n", {}, "no examples found"),
    ("cols.csv", "review,score\ngood,1\n", {}, r"line 1: no column 'text' \(columns present: 'review', 'score'\)"),
    ("cols.jsonl", '{"text": "a"}\n', {}, r"line 1: no field 'label' \(fields present: 'text'\); pass label_field="),
    ("fields.csv", "text,label\ngood,1\nbad, really bad,0\n", {}, r"line 3: 3 fields, but the header has 2"),
    ("labels.csv", "text,label\ngood,pos\nmeh,neutral\n", {"label_names": ["neg", "pos"]},
     r"labels\.csv, line 3: label 'neutral' is not one of the labels \['neg', 'pos'\]"),
    ("latin1.csv", b"text,label\ngood,1\n" + "caf\xe9,0\n".encode("latin1"), {},
     r"latin1\.csv, line 3 \(byte offset 21\): byte 0xe9 is not UTF-8; .*iconv -f latin1 -t utf-8"),
    ("one.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": "pos"}\n', {},
     r"every example has the label 'pos'; a classifier needs at least two classes"),
    ("emptytext.csv", "text,label\ngood,1\n  ,0\n", {}, r"emptytext\.csv, line 3: empty text"),
    ("brtext.jsonl", '{"text": "ok", "label": 0}\n{"text": "<br /><br />", "label": 1}\n', {},
     r"line 2: empty text"),
    ("long.csv", "text,label\nshort,1\n" + "x" * 50 + ",0\n", {"max_chars": 40},
     r"line 3: text of 50 characters is over the limit of 40; raise max_chars"),
    ("json.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', {}, r"line 2: not valid JSON"),
    ("list.jsonl", '{"text": "a", "label": 1}\n["b", 0]\n', {}, r"line 2: expected a JSON object"),
    ("label.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', {}, r"line 2: label None"),
    ("nolabel.csv", "text,label\na,1\nb,\n", {}, r"line 3: empty label"),
    ("notgzip.jsonl.gz", b"\x1f\x8bnot really gzip", {}, r"damaged gzip data"),
    ("what.xyz", "text,label\n", {}, r"cannot tell the format"),
])
def test_load_bad_input(tmp_path: Path, name: str, content: str | bytes, kwargs: dict, message: str) -> None:
    path = _bad(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as info:
        load_labelled_text(path, **kwargs)
    assert "\n" not in str(info.value)  # one line, for the CLI


def test_load_bad_paths_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: .*missing.csv"):
        load_labelled_text(tmp_path / "missing.csv")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not in aclImdb layout"):
        load_labelled_text(tmp_path / "plain")
    (tmp_path / "half" / "pos").mkdir(parents=True)
    (tmp_path / "half" / "pos" / "0_9.txt").write_text("good", encoding="utf-8")
    with pytest.raises(DataError, match="no neg/ folder"):
        load_labelled_text(tmp_path / "half")
    (tmp_path / "half" / "neg").mkdir()
    with pytest.raises(DataError, match="every example has the label 'pos'"):
        load_labelled_text(tmp_path / "half")
    (tmp_path / "half" / "neg" / "1_2.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"1_2\.txt: empty text"):
        load_labelled_text(tmp_path / "half")
    with pytest.raises(ConfigError, match="format must be one of"):
        load_labelled_text(tmp_path / "half", format="xml")


def test_load_oversized_csv_field_is_our_message_not_csv_limit(tmp_path: Path) -> None:
    # csv's own field limit is 128 KiB; the loader lifts it so the max_chars message speaks instead.
    path = _bad(tmp_path, "big.csv", "text,label\nok,0\n" + "y" * 140_000 + ",1\n")
    assert len(load_labelled_text(path).texts[1]) == 140_000
    with pytest.raises(DataError, match="line 3: text of 140,000 characters is over the limit of 100,000"):
        load_labelled_text(path, max_chars=100_000)


# split -------------------------------------------------------------------------------------------------


def test_train_validation_split_deterministic_disjoint_stratified() -> None:
    texts = [f"t{i}" for i in range(100)]
    data = LabelledTexts(texts, [0] * 80 + [1] * 20, ["neg", "pos"], source="mem")
    train, valid = train_validation_split(data, 0.25, seed=3)
    again_train, again_valid = train_validation_split(data, 0.25, seed=3)
    assert train.texts == again_train.texts and valid.texts == again_valid.texts
    assert len(train) == 75 and len(valid) == 25
    assert set(train.texts).isdisjoint(valid.texts) and set(train.texts) | set(valid.texts) == set(texts)
    assert valid.labels.count(1) == 5 and train.labels.count(1) == 15  # stratified: 20% positive in both
    assert all(data.labels[int(t[1:])] == label for t, label in zip(valid.texts, valid.labels, strict=True))
    assert train.texts != texts[:80] + texts[80:]  # shuffled
    other, _ = train_validation_split(data, 0.25, seed=4)
    assert other.texts != train.texts
    counted_train, counted_valid = train_validation_split(data, 10, seed=0)
    assert len(counted_valid) == 10 and len(counted_train) == 90


def test_the_default_split_holds_out_a_fifth_up_to_the_imdb_recipes_5000() -> None:
    from lstmkit.tasks.sentiment import SentimentDataConfig

    default = SentimentDataConfig()
    imdb = LabelledTexts([f"t{i}" for i in range(25_000)], [i % 2 for i in range(25_000)], ["0", "1"], source="imdb")
    train, valid = train_validation_split(imdb, default.valid_size, seed=0, valid_max=default.valid_max)
    counted_train, counted_valid = train_validation_split(imdb, 5000, seed=0)  # the recipe's recorded split
    assert valid.texts == counted_valid.texts and train.texts == counted_train.texts  # the same, in the same order
    big = LabelledTexts(imdb.texts * 2, imdb.labels * 2, ["0", "1"], source="big")
    assert len(train_validation_split(big, default.valid_size, seed=0, valid_max=default.valid_max)[1]) == 5000
    for n, held_out in [(4000, 800), (100, 20), (2, 1)]:
        small = LabelledTexts(imdb.texts[:n], imdb.labels[:n], ["0", "1"], source="small")
        train, valid = train_validation_split(small, default.valid_size, seed=0, valid_max=default.valid_max)
        assert (len(train), len(valid)) == (n - held_out, held_out)


def test_train_validation_split_errors() -> None:
    data = LabelledTexts(["a", "b"], [0, 1], ["neg", "pos"], source="tiny")
    with pytest.raises(DataError, match="cannot split 2 examples with valid_size=2"):
        train_validation_split(data, 2, seed=0)
    with pytest.raises(DataError, match="cannot split"):
        train_validation_split(LabelledTexts(["a"], [0], ["neg", "pos"]), 0.5, seed=0)
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        train_validation_split(data, 1.5, seed=0)


# download ----------------------------------------------------------------------------------------------


class _Server:
    """A tiny HTTP server on 127.0.0.1 (free port) in a thread, serving one folder and counting requests."""

    def __init__(self, folder: Path) -> None:
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not intercept
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    _write_tarball(served / "aclImdb_v1.tar.gz")
    srv = _Server(served)
    yield srv
    srv.close()


def test_download_checksum_cache_reuse_and_load(tmp_path: Path, server: _Server) -> None:
    tarball = tmp_path / "served" / "aclImdb_v1.tar.gz"
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = f"{server.url}/aclImdb_v1.tar.gz"
    path = download_imdb(cache, url=url, sha256=sha, progress=False)
    assert path == cache / "aclImdb_v1.tar.gz" and path.read_bytes() == tarball.read_bytes()
    assert not (cache / "aclImdb_v1.tar.gz.part").exists()
    assert server.requests == ["/aclImdb_v1.tar.gz"]
    assert download_imdb(cache, url=url, sha256=sha, progress=False) == path
    assert len(server.requests) == 1  # the verified cached copy is reused: no second request
    assert load_labelled_text(path).texts == TRAIN_TEXTS
    # a damaged cached copy is fetched again
    path.write_bytes(b"damaged")
    assert download_imdb(cache, url=url, sha256=sha, progress=False).read_bytes() == tarball.read_bytes()
    assert len(server.requests) == 2


def test_download_default_cache_from_environment_with_progress_bar(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("tqdm", reason="tqdm draws the progress bar")
    monkeypatch.setenv("LSTMKIT_CACHE", str(tmp_path / "envcache"))
    path = download_imdb(url=f"{server.url}/aclImdb_v1.tar.gz", sha256=None, progress=True)
    assert path == tmp_path / "envcache" / "aclImdb_v1.tar.gz" and path.is_file()
    err = capsys.readouterr().err
    assert "aclImdb_v1.tar.gz: " in err and "\r" not in err  # not a terminal: a plain line, named by the file


def test_download_checksum_mismatch(tmp_path: Path, server: _Server) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"checksum mismatch for .*expected 0{64}.*by hand") as info:
        download_imdb(cache, url=f"{server.url}/aclImdb_v1.tar.gz", sha256="0" * 64, progress=False)
    assert "--data PATH" in str(info.value)
    assert not (cache / "aclImdb_v1.tar.gz").exists() and not (cache / "aclImdb_v1.tar.gz.part").exists()


def test_download_http_error_and_unreachable(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DataError, match=r"could not download .*HTTP 404"):
        download_imdb(tmp_path / "c", url=f"{server.url}/missing.tar.gz", progress=False)
    with socket.socket() as sock:  # a port that was free a moment ago and has nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz"
    with pytest.raises(DataError, match=r"could not download .*refused.*by hand and save it as") as info:
        download_imdb(tmp_path / "c", url=url, progress=False, timeout=5)
    assert str(tmp_path / "c" / "aclImdb_v1.tar.gz") in str(info.value)
    assert not any((tmp_path / "c").glob("*.part"))


# the real data (read-only, outside the repository) -----------------------------------------------------


@pytest.mark.skipif(not REAL_IMDB.exists(), reason=f"development data not present: {REAL_IMDB}")
def test_real_imdb_train_jsonl() -> None:
    data = load_labelled_text(REAL_IMDB)
    assert len(data) == 25_000
    assert data.label_names == ["0", "1"]  # the file's label: 1 = pos, 0 = neg
    assert data.labels.count(0) == 12_500 and data.labels.count(1) == 12_500
    token_lists = [tokenize_words(text) for text in data.texts]
    with_breaks = [tokens for text, tokens in zip(data.texts, token_lists, strict=True) if "<br />" in text]
    assert len(with_breaks) == 14_665  # as data/README.md counts them; the tokenizer leaves no trace of them
    assert not any("br" in tokens for tokens in with_breaks)
    vocab = Vocab.build(token_lists, num_words=10_000)
    assert len(vocab) == 10_000
    ids, lengths = pad_sequences([vocab.encode(tokens) for tokens in token_lists[:2000]], maxlen=500)
    assert ids.shape == (2000, 500) and int(ids.max()) < 10_000 and int(lengths.min()) >= 1
