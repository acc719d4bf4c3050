"""A character-level language-modelling corpus from any UTF-8 text file.

The papers' language models are word-level LSTMs on Penn Treebank (Gadam, Sec. 5.4; the vanilla
SGD paper, Sec. 6.4), whose licence keeps it out of an offline default. The benchmark instead
models characters of a public-domain text: the King James Bible of Debian's ``bible-kjv`` /
``bible-kjv-text`` packages (read through their ``bible`` program, as its data file is
compressed), or any UTF-8 file given by path.

The text is split into train / validation / test by contiguous blocks (the first
``1 - val_fraction - test_fraction`` of the characters, then the next ``val_fraction``, then the
rest), as language-modelling corpora are, so no sentence straddles two splits by sampling. The
vocabulary is every character of the whole text, sorted by code point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from polyak.bench.data import DataError

__all__ = ["CharCorpus", "batchify", "build_corpus", "chunks", "kjv_text", "load_kjv",
           "load_text", "strip_bible_references"]


@dataclass
class CharCorpus:
    """Train / validation / test character ids (int64, 1-D) and the vocabulary they index."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Character ids of ``text``; a character outside the vocabulary is a ``ValueError``."""
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(
                f"Invalid text: character {exc.args[0]!r} not in the vocabulary") from exc

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())


def build_corpus(text: str, *, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 max_chars: int | None = None) -> CharCorpus:
    """Encode ``text`` (its first ``max_chars`` characters if given); split it in three blocks."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ValueError(f"Invalid {name}: {value!r} (allowed: 0 < {name} < 0.5)")
    if max_chars is not None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"Invalid max_chars: {max_chars!r} (allowed: an integer >= 1)")
        text = text[:max_chars]
    n = len(text)
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    if min(n_val, n_test) < 2:
        raise ValueError(f"Invalid text: {n} characters are too few for validation and test "
                         f"blocks of fractions {val_fraction} and {test_fraction}")
    vocab = "".join(sorted(set(text)))
    lookup = torch.full((max(map(ord, vocab)) + 1,), -1, dtype=torch.int64)
    lookup[torch.tensor([ord(c) for c in vocab])] = torch.arange(len(vocab))
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    ids = lookup[codes.to(torch.int64)]
    n_train = n - n_val - n_test
    return CharCorpus(train=ids[:n_train].clone(), val=ids[n_train:n_train + n_val].clone(),
                      test=ids[n_train + n_val:].clone(), vocab=vocab)


def load_text(path: str | Path, **kwargs) -> CharCorpus:
    """:func:`build_corpus` of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text corpus not found: expected a UTF-8 text file at {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    return build_corpus(text, **kwargs)


_VERSE = re.compile(r"^\s+\d+ (.*)$")


def strip_bible_references(raw: str) -> str:
    """The text of the ``bible`` program's output, one verse per line, without references.

    The program prints, for each chapter, a blank line, the heading (``Genesis 1``), a blank line,
    then each verse as ``  <number> <text>`` wrapped onto unindented continuation lines.
    """
    verses: list[str] = []
    after_blank = True
    for line in raw.splitlines():
        if not line.strip():
            after_blank = True
            continue
        match = _VERSE.match(line)
        if match:
            verses.append(match.group(1).strip())
        elif not after_blank and verses:  # continuation of the wrapped verse
            verses[-1] += " " + line.strip()
        after_blank = False  # a line right after a blank one that is no verse: a heading
    return "\n".join(verses) + "\n" if verses else ""


def kjv_text(program: str = "bible") -> str:
    """The King James Bible, Genesis 1:1 to Revelation 22:21, without verse references."""
    exe = shutil.which(program)
    if exe is None:
        raise FileNotFoundError(
            f"King James Bible not found: expected the `{program}` program on PATH; "
            "get it with `apt-get install bible-kjv` (its text is in bible-kjv-text)")
    out = subprocess.run([exe, "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=120)
    if out.returncode != 0:
        raise DataError(f"{exe} failed (status {out.returncode}): {out.stderr.decode()[:200]}")
    text = strip_bible_references(out.stdout.decode("utf-8", errors="replace"))
    if len(text) < 1000:
        raise DataError(f"{exe} printed {len(text)} characters of verse text, expected the Bible")
    return text


def load_kjv(program: str = "bible", **kwargs) -> CharCorpus:
    """:func:`build_corpus` of the King James Bible (the offline default corpus)."""
    return build_corpus(kjv_text(program), **kwargs)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D id stream into ``batch_size`` contiguous rows ``(batch_size, T)``, dropping the
    remainder; row ``b`` continues across consecutive chunks (truncated BPTT)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size!r} (allowed: an integer >= 1)")
    T = len(ids) // batch_size
    if T < 2:
        raise ValueError(f"Invalid batch_size: {batch_size} (leaves {T} < 2 characters per row)")
    return ids[: T * batch_size].reshape(batch_size, T)


def chunks(batched: torch.Tensor, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input, target)`` pairs of shape ``(B, <= seq_len)``; target = input shifted
    by one character."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"Invalid seq_len: {seq_len!r} (allowed: an integer >= 1)")
    T = batched.shape[1]
    for start in range(0, T - 1, seq_len):
        end = min(start + seq_len, T - 1)
        yield batched[:, start:end], batched[:, start + 1:end + 1]
