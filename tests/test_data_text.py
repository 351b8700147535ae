"""Language-model data: the built-in corpus, reading text files, tokens, vocabulary, batchify and BPTT windows."""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch

from lstmkit.data.text import (
    EOS,
    LMCorpus,
    batchify,
    bits_per_char,
    build_lm_vocab,
    default_corpus,
    get_window,
    num_windows,
    perplexity,
    read_corpus,
    split_text,
    tokenize,
    tokenize_open,
)
from lstmkit.data.vocab import PAD, UNK
from lstmkit.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared/data"
PTB = SHARED_DATA / "ptb"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare/input.txt"


def letters(n: int = 26) -> torch.Tensor:
    """ids 0..n-1 standing for a, b, c, ...: the stream of batchify's docstring."""
    return torch.arange(n, dtype=torch.long)


# the built-in corpus -------------------------------------------------------------------------------------


def test_default_corpus_is_large_deterministic_text():
    text = default_corpus()
    # Measured 465,048 characters on CPython 3.11.7; other versions ship somewhat different topics,
    # so the bound leaves room while still ruling out a corpus too small for a few-minute run.
    assert len(text) >= 400_000, len(text)
    assert "\x00" not in text and "\r" not in text
    assert text.startswith('The "assert" statement')  # "assert" is the first topic in sorted order
    keys = sorted(topics)
    start = 0  # every topic in sorted key order, one blank line between two, one newline at the end
    for key in keys:
        body = topics[key].strip("\n")
        end = "\n" if key == keys[-1] else "\n\n"
        assert text[start : start + len(body) + len(end)] == body + end, f"topic {key!r} at {start}"
        start += len(body) + len(end)
    assert start == len(text)
    default_corpus.cache_clear()
    assert default_corpus() == text  # rebuilt from scratch: the same text
    assert len(tokenize(text, "word")) > 50_000


# read_corpus ---------------------------------------------------------------------------------------------


def test_read_corpus_reads_utf8_and_normalises_newlines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9\r\nline two\n")
    assert read_corpus(path) == "café\nline two\n"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b" \n\t\r\n  ", "only whitespace"),
    (b"hello\x00world", "NUL byte at byte offset 5"),
    (b"abc\ndef\xff\xfeghi", "line 2 (byte offset 7): byte 0xff is not UTF-8"),
])
def test_read_corpus_rejects_unusable_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        read_corpus(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_read_corpus_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a folder"):
        read_corpus(tmp_path)


# tokens and vocabulary -----------------------------------------------------------------------------------


def test_tokenize_word_level_keeps_the_texts_tokens_and_ends_lines():
    text = " The cat sat.\nIt's <unk> N\n\nend"
    assert tokenize(text, "word") == ["The", "cat", "sat.", EOS, "It's", "<unk>", "N", EOS, EOS, "end", EOS]
    assert tokenize("a b\n", "word") == ["a", "b", EOS]  # a final newline ends the last line only once
    assert tokenize("", "word") == []


def test_tokenize_char_level():
    assert tokenize("Ab c\n", "char") == ["A", "b", " ", "c", "\n"]
    with pytest.raises(ValueError, match="level"):
        tokenize("x", "byte")


def test_an_open_text_ends_without_eos_unless_its_line_is_finished():
    assert tokenize_open("the cat sat", "word") == ["the", "cat", "sat"]
    assert tokenize_open("the cat\nsat", "word") == ["the", "cat", EOS, "sat"]
    assert tokenize_open("the cat\n", "word") == ["the", "cat", EOS]
    assert tokenize_open("ab", "char") == ["a", "b"] and tokenize_open("", "word") == []


def test_vocab_from_training_text_only():
    corpus = LMCorpus.from_text("a b a\nb c\n", "a d\ne e\n", "word")
    vocab = corpus.vocab
    # specials first, then by count (a 2, b 2, c 1; ties by token)
    assert vocab.tokens == [PAD, UNK, EOS, "a", "b", "c"] and vocab.level == "word"
    assert corpus.train.tolist() == [3, 4, 3, 2, 4, 5, 2]
    assert corpus.valid.tolist() == [3, 1, 2, 1, 1, 2]  # d and e never in training -> <unk>
    assert corpus.valid_unknown == 3
    assert corpus.train.dtype == torch.long and corpus.test is None


def test_char_vocab_and_word_cap():
    corpus = LMCorpus.from_text("hello", "help!", "char")
    assert corpus.vocab.tokens == [PAD, UNK, "l", "e", "h", "o"] and corpus.level == "char"
    assert corpus.valid.tolist() == [4, 3, 2, 1, 1] and corpus.valid_unknown == 2
    vocab = build_lm_vocab(["x", "y", "y", "z", "z", "z"], "word", num_words=4)
    assert vocab.tokens == [PAD, UNK, EOS, "z"]


def test_empty_validation_text_is_an_error():
    with pytest.raises(DataError, match="validation text has no tokens"):
        LMCorpus.from_text("abc", "", "char")


def test_split_text_is_contiguous_first_part_for_training():
    text = string.ascii_lowercase * 4  # 104 characters
    train, valid = split_text(text, 0.25)
    assert (len(train), len(valid)) == (78, 26) and train + valid == text
    train, valid = split_text(text)
    assert (len(train), len(valid)) == (93, 11)  # int(104 * 0.9) = 93, as nanoGPT cuts
    assert split_text("ab", 0.1) == ("a", "b")
    with pytest.raises(DataError, match="1 characters is too short"):
        split_text("a", 0.5)


# batchify and windows ------------------------------------------------------------------------------------


def test_batchify_columns_are_contiguous_stretches():
    data = batchify(letters(26), 4)
    expected = torch.tensor([
        [0, 6, 12, 18],
        [1, 7, 13, 19],
        [2, 8, 14, 20],
        [3, 9, 15, 21],
        [4, 10, 16, 22],
        [5, 11, 17, 23],
    ])  # 24 (y) and 25 (z) dropped
    assert data.shape == (6, 4) and torch.equal(data, expected) and data.is_contiguous()


def test_get_window_inputs_targets_and_short_last_window():
    data = batchify(letters(26), 4)  # [6, 4]
    assert num_windows(data, 4) == 2
    x, y = get_window(data, 0, 4)
    assert torch.equal(x, torch.tensor([[0, 6, 12, 18], [1, 7, 13, 19], [2, 8, 14, 20], [3, 9, 15, 21]]))
    assert torch.equal(y, torch.tensor([[1, 7, 13, 19], [2, 8, 14, 20], [3, 9, 15, 21], [4, 10, 16, 22]]))
    x, y = get_window(data, 1, 4)  # rows 4 -> 5: the last row is only ever a target
    assert torch.equal(x, torch.tensor([[4, 10, 16, 22]])) and torch.equal(y, torch.tensor([[5, 11, 17, 23]]))
    with pytest.raises(IndexError, match="windows 0..1"):
        get_window(data, 2, 4)


@pytest.mark.parametrize("T, bptt, expected", [(6, 1, 5), (6, 5, 1), (6, 6, 1), (6, 2, 3), (2, 35, 1), (36, 35, 1),
                                               (37, 35, 2)])
def test_num_windows_covers_every_target_once(T, bptt, expected):
    data = batchify(letters(T * 3), 3)
    assert num_windows(data, bptt) == expected
    targets = torch.cat([get_window(data, i, bptt)[1] for i in range(expected)])
    assert torch.equal(targets, data[1:])  # each row after the first is predicted exactly once


def test_too_short_stream_is_an_error():
    with pytest.raises(DataError, match="has 7 tokens, too few for 4 columns .* 8 tokens are needed"):
        batchify(letters(7), 4)
    with pytest.raises(DataError, match="validation text has 1 tokens"):
        batchify(letters(1), 1, what="the validation text")
    with pytest.raises(DataError, match="8 tokens are needed"):
        num_windows(letters(4).view(1, 4), 35)
    assert batchify(letters(8), 4).shape == (2, 4)  # exactly enough


# units ---------------------------------------------------------------------------------------------------


def test_bits_per_char_and_perplexity():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert bits_per_char(math.log(65)) == pytest.approx(math.log2(65))
    assert perplexity(math.log(10_000)) == pytest.approx(10_000)
    assert perplexity(1e4) == math.inf


# the real data sets (read-only, outside the repository) ------------------------------------------------


@pytest.mark.skipif(not PTB.is_dir(), reason=f"Penn Treebank not found at {PTB}")
def test_ptb_has_ten_thousand_types():
    corpus = LMCorpus.from_ptb(PTB)
    # 10,000 types in the text (its own <unk> and the <eos> we add included), plus <pad>
    assert len(corpus.vocab) == 10_001 and corpus.vocab.specials == [PAD, UNK, EOS]
    assert corpus.train.numel() == 929_589
    assert (corpus.valid_unknown, corpus.test_unknown) == (0, 0)  # PTB's vocabulary is closed
    assert corpus.valid.numel() == 73_760 and corpus.test is not None and corpus.test.numel() == 82_430
    assert int(corpus.train.max()) < len(corpus.vocab) and int(corpus.train.min()) >= 1  # never <pad>


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare not found at {SHAKESPEARE}")
def test_tiny_shakespeare_char_corpus():
    text = read_corpus(SHAKESPEARE)
    train, valid = split_text(text)
    assert (len(text), len(train), len(valid)) == (1_115_394, 1_003_854, 111_540)  # nanoGPT's split
    corpus = LMCorpus.from_text(train, valid, "char")
    assert len(corpus.vocab) == 65 + 2 and corpus.valid_unknown == 0
    assert corpus.train.numel() == len(train) and corpus.valid.numel() == len(valid)
    assert "".join(corpus.vocab.decode(corpus.valid[:20].tolist())) == valid[:20]
