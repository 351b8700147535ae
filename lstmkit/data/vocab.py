"""Text to ids: a word tokenizer, a capped vocabulary saved as JSON, and Keras-style padding.

The vocabulary's one promise: every id it hands out is < len(vocab) <= num_words, so an
`Embedding(num_words, E)` can never be indexed out of range, whatever text comes in later.

    "A <br />great film!"  --tokenize_words-->  ["a", "great", "film", "!"]
                           --Vocab.encode--->  [5, 1, 23, 9]          (1 = <unk>: "great" was cut by the cap)
                           --pad_sequences-->  [[0, 0, 5, 1, 23, 9]]  lengths [4]   (maxlen 6, padding "pre")
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from lstmkit.errors import DataError

PAD = "<pad>"
UNK = "<unk>"
VOCAB_FORMAT = "lstmkit.vocab"
VOCAB_VERSION = 1
LEVELS = ("word", "char")

# IMDB reviews carry their paragraph breaks as literal HTML: `<br />`, sometimes `<br/>` or `<BR>`.
HTML_BREAK = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
# A word is a run of letters/digits, optionally joined by one apostrophe or hyphen to the next run
# ("don't", "it's", "well-made", "1950s"); anything else that is not a space is a token of one character.
_TOKEN = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")


def tokenize_words(text: str) -> list[str]:
    """Lowercased word and punctuation tokens, with HTML line breaks removed (and ’ read as ').

    >>> tokenize_words("It's a well-made film.<br /><br />I LOVED it!!")
    ["it's", 'a', 'well-made', 'film', '.', 'i', 'loved', 'it', '!', '!']
    """
    return _TOKEN.findall(HTML_BREAK.sub(" ", text).replace("’", "'").lower())


def tokenize_chars(text: str) -> list[str]:
    """One token per character, for character-level models (nothing removed, case kept)."""
    return list(text)


class Vocab:
    """Tokens <-> ids. Id 0 is `<pad>`, id 1 is `<unk>`; any further specials follow, then the kept tokens.

    `level` says what a token is: "word" (from `tokenize_words`) or "char" (single characters).
    Lookups: `token_to_id(token)` (unknown -> 1), `id_to_token(i)`, `encode(tokens)`, `decode(ids)`,
    `len(vocab)`, `token in vocab`, `vocab.tokens` (the list, index = id).
    """

    pad_id = 0
    unk_id = 1

    def __init__(self, tokens: Sequence[str], *, level: str = "word", num_specials: int = 2) -> None:
        tokens = list(tokens)
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {tokens[:2]}")
        if not 2 <= num_specials <= len(tokens):
            raise ValueError(f"num_specials must be in [2, {len(tokens)}], not {num_specials}")
        self._tokens = tokens
        self._ids = {token: i for i, token in enumerate(tokens)}
        if len(self._ids) != len(tokens):
            duplicate = next(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"token {duplicate!r} appears more than once")
        self.level = level
        self.num_specials = num_specials

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        num_words: int | None = 10000,
        min_freq: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        level: str = "word",
    ) -> Vocab:
        """Keep the most frequent tokens so that len(vocab) <= num_words, the specials included.

        Ties are broken by the token itself (count descending, then token ascending), so the same corpus
        always gives the same ids. `num_words=None` keeps every token seen at least `min_freq` times.
        """
        specials = list(specials)
        if specials[:2] != [PAD, UNK] or len(set(specials)) != len(specials):
            raise ValueError(f"specials must start with {PAD!r}, {UNK!r} and not repeat; got {specials}")
        if num_words is not None and num_words < len(specials):
            raise ValueError(f"num_words={num_words} leaves no room for the {len(specials)} special tokens")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, not {min_freq}")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for special in specials:  # a special's id is fixed; text that happens to contain it maps there
            counts.pop(special, None)
        ranked = sorted((item for item in counts.items() if item[1] >= min_freq), key=lambda tc: (-tc[1], tc[0]))
        room = len(ranked) if num_words is None else num_words - len(specials)
        return cls(specials + [token for token, _ in ranked[:room]], level=level, num_specials=len(specials))

    # lookups -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (self._tokens, self.level, self.num_specials) == (other._tokens, other.level, other.num_specials)

    __hash__ = None  # mutable-looking container semantics: equal by value, not hashable

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens, level={self.level!r})"

    @property
    def tokens(self) -> list[str]:
        """All tokens, index = id (a copy)."""
        return list(self._tokens)

    @property
    def specials(self) -> list[str]:
        return self._tokens[: self.num_specials]

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, self.unk_id)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"id {i} is outside this vocabulary (ids 0..{len(self._tokens) - 1})")
        return self._tokens[i]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of `tokens`; a token not in the vocabulary becomes 1 (`<unk>`)."""
        get, unk = self._ids.get, self.unk_id
        return [get(token, unk) for token in tokens]

    def decode(self, ids: Iterable[int], *, skip_pad: bool = False) -> list[str]:
        """Tokens of `ids` (join them with "" for a char vocabulary, " " for words)."""
        return [self.id_to_token(int(i)) for i in ids if not (skip_pad and int(i) == self.pad_id)]

    # JSON ----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "level": self.level,
            "specials": self.specials,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: object, source: str = "vocabulary") -> Vocab:
        """Check a `to_dict()` result (typically read from a file) and build the Vocab; DataError if damaged."""

        def damaged(what: str) -> DataError:
            return DataError(f"{source}: {what}; rebuild the vocabulary or use the vocab.json saved with the model")

        if not isinstance(data, dict):
            raise damaged(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format") != VOCAB_FORMAT:
            raise damaged(f"not an lstmkit vocabulary (format is {data.get('format')!r}, expected {VOCAB_FORMAT!r})")
        if data.get("version") != VOCAB_VERSION:
            raise damaged(f"vocabulary version {data.get('version')!r} is not supported (this lstmkit reads "
                          f"version {VOCAB_VERSION})")
        level, specials, tokens = data.get("level", "word"), data.get("specials"), data.get("tokens")
        if level not in LEVELS:
            raise damaged(f"level {level!r} is not one of {list(LEVELS)}")
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise damaged("'tokens' must be a list of non-empty strings")
        if not isinstance(specials, list) or specials[:2] != [PAD, UNK]:
            raise damaged(f"'specials' must be a list starting with {PAD!r}, {UNK!r}")
        if tokens[: len(specials)] != specials:
            raise damaged(f"the first tokens must be the specials {specials}, found {tokens[: len(specials)]}")
        seen: set[str] = set()
        for i, token in enumerate(tokens):
            if token in seen:
                raise damaged(f"token {token!r} appears twice (again at id {i})")
            seen.add(token)
        if level == "char":
            long_token = next((t for t in tokens[len(specials):] if len(t) != 1), None)
            if long_token is not None:
                raise damaged(f"a char vocabulary holds single characters, found {long_token!r}")
        return cls(tokens, level=level, num_specials=len(specials))

    def save(self, path: str | os.PathLike) -> None:
        """Write UTF-8 JSON, atomically (a crash leaves the old file, never half a new one)."""
        from lstmkit.runs import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"vocabulary file not found: {path}") from None
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 (byte {error.start}); is this really a vocab.json?") from None
        except OSError as error:
            raise DataError(f"cannot read vocabulary {path}: {error.strerror or error}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                            "rebuild the vocabulary or use the vocab.json saved with the model") from None
        return cls.from_dict(data, source=str(path))


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    maxlen: int | None = None,
    padding: str = "pre",
    truncating: str = "pre",
    value: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad/truncate id sequences to one length, with Keras' semantics (and defaults: pre, pre).

    Returns `ids: [B, L]` (int64) and `lengths: [B]`, the number of real ids kept in each row
    (1 <= length <= L). L is `maxlen`, or the longest sequence when `maxlen` is None.
    `truncating="pre"` drops the start of a long sequence (keeps its end, as Keras does);
    `padding="pre"` puts the padding before the ids.

    An empty sequence raises DataError: it has nothing for an LSTM to read and a zero length breaks
    packing, so it is better caught here, with its index, than deep inside the model.
    """
    if padding not in ("pre", "post"):
        raise ValueError(f"padding must be 'pre' or 'post', not {padding!r}")
    if truncating not in ("pre", "post"):
        raise ValueError(f"truncating must be 'pre' or 'post', not {truncating!r}")
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
        raise ValueError(f"maxlen must be a positive int or None, not {maxlen!r}")
    if len(sequences) == 0:
        raise DataError("no sequences to pad")
    sizes = [len(seq) for seq in sequences]
    empty = next((b for b, n in enumerate(sizes) if n == 0), None)
    if empty is not None:
        raise DataError(f"sequence {empty} is empty (no tokens); drop it or check its text before padding")
    L = maxlen if maxlen is not None else max(sizes)
    ids = np.full((len(sequences), L), value, dtype=np.int64)  # [B, L]
    lengths = np.minimum(np.asarray(sizes, dtype=np.int64), L)  # [B]
    for b, (seq, n) in enumerate(zip(sequences, lengths.tolist(), strict=True)):
        kept = seq[len(seq) - n:] if truncating == "pre" else seq[:n]
        if padding == "pre":
            ids[b, L - n:] = kept
        else:
            ids[b, :n] = kept
    return torch.from_numpy(ids), torch.from_numpy(lengths)
