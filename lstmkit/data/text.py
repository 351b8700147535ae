"""Language-model corpora: text to one long id stream, cut into columns and windows for truncated BPTT.

    text --tokenize--> tokens --Vocab.encode--> ids: [N] --batchify--> data: [T, B] --get_window--> x, y: [L, B]

A language model reads each column of `data` from top to bottom, one window of `bptt` steps at a time, and
carries its (h, c) from one window to the next, detached (truncated backpropagation through time).
Losses are in nats per token; `bits_per_char` and `perplexity` turn them into the usual reporting units.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from lstmkit.data.reviews import decode_utf8
from lstmkit.data.vocab import LEVELS, PAD, UNK, Vocab, tokenize_chars
from lstmkit.errors import DataError

EOS = "<eos>"
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}


# text ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def default_corpus() -> str:
    """The built-in corpus: every help topic of the standard library's `pydoc_data.topics`, offline.

    Topics are joined in sorted key order, one blank line between them, so the text is the same on every
    run of the same Python. On CPython 3.11.7 it is 465,048 characters (79 topics, 103 distinct characters,
    65,501 whitespace-separated words): about 40% of Tiny Shakespeare, enough for a few-minute run on a
    laptop. Other Python versions ship slightly different topics, hence a slightly different corpus.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some minimal Python builds strip the documentation
        raise DataError("this Python has no pydoc_data package, so there is no built-in corpus; "
                        "give a UTF-8 text file with --data") from None
    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def read_corpus(path: str | os.PathLike) -> str:
    """A UTF-8 text file as a string, `\\r\\n` read as `\\n`, byte-order mark dropped; DataError if unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}; give the path of a UTF-8 text file") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; give the path of a UTF-8 text file") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if not data:
        raise DataError(f"{path} is empty; give a text file with something to learn from")
    # NUL is valid UTF-8, but no text file has one: it marks a binary, compressed or UTF-16 file.
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path} is not a text file: NUL byte at byte offset {nul} (binary, compressed or "
                        "UTF-16?); give a UTF-8 text file")
    text = decode_utf8(data, str(path))  # DataError naming the line and byte offset of the first bad byte
    if not text.strip():
        raise DataError(f"{path} holds only whitespace; give a text file with something to learn from")
    return text.replace("\r\n", "\n")


def tokenize(text: str, level: str) -> list[str]:
    """Tokens of a language model: characters ("char"), or the text's own words plus `<eos>` ("word").

    Word level follows the Penn Treebank convention: each line becomes `line.split() + ["<eos>"]`, nothing
    lowercased or split off, so an empty line is a lone `<eos>` (it ends a paragraph, which a model of
    the text should learn too). A last line without a newline is ended by `<eos>` as well; "" has no tokens.

    >>> tokenize("the cat\\n\\nsat", "word")
    ['the', 'cat', '<eos>', '<eos>', 'sat', '<eos>']
    """
    if level == "char":
        return tokenize_chars(text)
    if level != "word":
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    lines = text.split("\n")  # not splitlines(): that would also break at \x0b, \x1c, \u2028, ...
    if lines[-1] == "":  # the piece after the final newline (or the whole of ""): no line there
        lines.pop()
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def tokenize_open(text: str, level: str) -> list[str]:
    """Tokens of a text the model is to continue (a prompt, a traced text): `tokenize`, except that at word
    level a text not ending in a newline is an unfinished line, so it gets no final `<eos>`."""
    tokens = tokenize(text, level)
    if level == "word" and tokens and tokens[-1] == EOS and not text.endswith("\n"):
        tokens = tokens[:-1]
    return tokens


def build_lm_vocab(tokens: Sequence[str], level: str, num_words: int | None = None, min_freq: int = 1) -> Vocab:
    """The vocabulary of a token stream: `<pad>` 0, `<unk>` 1, `<eos>` 2 (word level only), then by frequency.

    `<pad>` is never in a stream (it is kept so every lstmkit Vocab has the same first ids); a literal
    `<unk>` or `<eos>` in the text (PTB has both) maps to the special's id.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    specials = (PAD, UNK, EOS) if level == "word" else (PAD, UNK)
    return Vocab.build([tokens], num_words=num_words, min_freq=min_freq, specials=specials, level=level)


def split_text(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """(train, valid): the first (1 - f) of the characters and the rest, contiguous, as nanoGPT splits.

    The cut is at character `int(len(text) * (1 - f))` whatever is there, so at word level the word on the
    cut may end up in two halves: one odd token in a corpus, not worth a second rule.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), not {valid_fraction}")
    cut = int(len(text) * (1.0 - valid_fraction))
    if cut == 0 or cut == len(text):
        raise DataError(f"a text of {len(text)} characters is too short to keep {valid_fraction:.0%} of it for "
                        "validation; give a longer text")
    return text[:cut], text[cut:]


# streams, columns, windows -------------------------------------------------------------------------------


def batchify(ids: torch.Tensor, batch_size: int, *, what: str = "the text") -> torch.Tensor:
    """Cut a stream `ids: [N]` into `B = batch_size` equal columns, time-major: `[T, B]`, T = N // B.

    The stream runs down column 0, then down column 1, and so on; the N - T*B tokens left over are dropped.
    With the 26 letters and B = 4 (T = 6; y and z dropped):

        stream: a b c d e f | g h i j k l | m n o p q r | s t u v w x | y z
                  column 0      column 1      column 2      column 3    dropped

                 b=0  b=1  b=2  b=3
          t=0     a    g    m    s     <- window 0 reads rows 0..bptt-1 of every column at once,
          t=1     b    h    n    t        window 1 the next rows: row t+1 continues row t's text in
          t=2     c    i    o    u        each column, so the state one window ends with is the state
          t=3     d    j    p    v        the next window should start from
          t=4     e    k    q    w
          t=5     f    l    r    x

    Columns never meet: "f" is not followed by "g" in training, which costs one lost prediction per column.
    `what` names the stream in the error raised when T < 2 (fewer than one input and one target per column).
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be one stream [N], not shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    T = ids.numel() // batch_size
    _check_length(T, batch_size, ids.numel(), what)
    return ids[: T * batch_size].view(batch_size, T).t().contiguous()  # [B, T] -> [T, B]


def num_windows(data: torch.Tensor, bptt: int) -> int:
    """How many windows `get_window` gives for `data: [T, B]`: ceil((T - 1) / bptt), the last maybe shorter."""
    if bptt < 1:
        raise ValueError(f"bptt must be at least 1, not {bptt}")
    T, B = data.shape
    _check_length(T, B, data.numel(), "the text")
    return (T - 1 + bptt - 1) // bptt  # T - 1 steps have a next token to predict


def get_window(data: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window i of `data: [T, B]`: `input = data[s : s+L]`, `target = data[s+1 : s+1+L]`, both `[L, B]`.

    s = i * bptt and L = min(bptt, T - 1 - s) >= 1: the target is the input one step later, so the last row
    is never an input, and the last window is shorter when bptt does not divide T - 1. With T = 6, bptt = 4
    (the picture in `batchify`): window 0 is rows 0..3 -> 1..4, window 1 is row 4 -> row 5.
    Both are views into `data` (no copy).
    """
    n = num_windows(data, bptt)
    if not 0 <= i < n:
        raise IndexError(f"window {i} does not exist: {data.shape[0]} rows with bptt={bptt} give windows 0..{n - 1}")
    s = i * bptt
    L = min(bptt, data.shape[0] - 1 - s)
    return data[s : s + L], data[s + 1 : s + 1 + L]  # [L, B], [L, B]


def _check_length(T: int, B: int, tokens: int, what: str) -> None:
    if T < 2:
        raise DataError(f"{what} has {tokens} tokens, too few for {B} columns of at least one input and one "
                        f"target each: {2 * B} tokens are needed; give a longer text or a smaller batch size")


# corpora -------------------------------------------------------------------------------------------------


@dataclass
class LMCorpus:
    """A language-model corpus: its vocabulary (from the training text only) and the id streams.

    `valid_unknown` / `test_unknown` count the tokens of those texts that the training text never had
    (or that `num_words` cut): they read as `<unk>`, and a large count makes the validation loss optimistic.
    """

    vocab: Vocab
    train: torch.Tensor  # [N_train] int64
    valid: torch.Tensor  # [N_valid] int64
    level: str
    valid_unknown: int = 0
    test: torch.Tensor | None = None  # [N_test] int64, when the corpus has a test split (PTB)
    test_unknown: int = 0

    @classmethod
    def from_text(
        cls, train_text: str, valid_text: str, level: str, num_words: int | None = None, min_freq: int = 1
    ) -> LMCorpus:
        train_tokens = tokenize(train_text, level)
        if not train_tokens:
            raise DataError("the training text has no tokens; give a longer text")
        vocab = build_lm_vocab(train_tokens, level, num_words=num_words, min_freq=min_freq)
        valid, valid_unknown = _encode(vocab, tokenize(valid_text, level), "validation")
        train, _ = _encode(vocab, train_tokens, "training")
        return cls(vocab=vocab, train=train, valid=valid, level=level, valid_unknown=valid_unknown)

    @classmethod
    def from_ptb(cls, directory: str | os.PathLike) -> LMCorpus:
        """The Penn Treebank of Mikolov et al. (ptb.train/valid/test.txt): word level, 10,000 types with `<eos>`."""
        directory = Path(directory)
        missing = [name for name in PTB_FILES.values() if not (directory / name).is_file()]
        if missing:
            raise DataError(f"{directory}: no {', '.join(missing)}; give the folder that holds "
                            f"{', '.join(PTB_FILES.values())}")
        texts = {split: read_corpus(directory / name) for split, name in PTB_FILES.items()}
        corpus = cls.from_text(texts["train"], texts["valid"], "word")
        corpus.test, corpus.test_unknown = _encode(corpus.vocab, tokenize(texts["test"], "word"), "test")
        return corpus


def _encode(vocab: Vocab, tokens: list[str], what: str) -> tuple[torch.Tensor, int]:
    """(ids: [N] int64, how many tokens were not in the vocabulary and became `<unk>`)."""
    if not tokens:
        raise DataError(f"the {what} text has no tokens; give a longer text")
    unknown = sum(token not in vocab for token in tokens)
    return torch.tensor(vocab.encode(tokens), dtype=torch.long), unknown


# units -----------------------------------------------------------------------------------------------------


def bits_per_char(nats_per_token: float) -> float:
    """Cross-entropy in bits: nats / ln 2. Bits per character for a char-level model (one token per character);
    for a word-level model this is bits per word, not per character."""
    return nats_per_token / math.log(2)


def perplexity(nats_per_token: float) -> float:
    """exp(nats): the vocabulary size of a uniform guess that would do as well; inf when it overflows."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:  # a diverged run (loss > 709 nats) should report inf, not crash the evaluation
        return math.inf
