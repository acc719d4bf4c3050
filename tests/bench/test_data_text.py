"""Character corpus: vocabulary, encoding, contiguous split, batching, the KJV reader."""

import os
import stat

import pytest
import torch

from polyak.bench.data import DataError
from polyak.bench.data.text import (
    batchify,
    build_corpus,
    chunks,
    kjv_text,
    load_kjv,
    load_text,
    strip_bible_references,
)

TEXT = "In the beginning God created the heaven and the earth. Ünïcödé too!\n" * 20


def test_contiguous_split_and_round_trip():
    c = build_corpus(TEXT, val_fraction=0.1, test_fraction=0.05)
    n = len(TEXT)
    assert len(c.val) == int(n * 0.1) and len(c.test) == int(n * 0.05)
    assert len(c.train) + len(c.val) + len(c.test) == n
    assert c.decode(c.train) + c.decode(c.val) + c.decode(c.test) == TEXT
    assert c.vocab == "".join(sorted(set(TEXT))) and c.vocab_size == len(set(TEXT))
    for ids in (c.train, c.val, c.test):
        assert ids.dtype == torch.int64
    # each id is the rank of its character's code point
    assert all(c.vocab[i] == ch for i, ch in zip(c.train[:50].tolist(), TEXT[:50]))


def test_encode_decode_and_unknown_character():
    c = build_corpus(TEXT)
    assert c.decode(c.encode("the earth")) == "the earth"
    with pytest.raises(ValueError, match="'Z'"):
        c.encode("Zebra")


def test_max_chars_and_validation():
    c = build_corpus(TEXT, max_chars=500)
    assert len(c.train) + len(c.val) + len(c.test) == 500
    with pytest.raises(ValueError, match="val_fraction"):
        build_corpus(TEXT, val_fraction=0.6)
    with pytest.raises(ValueError, match="too few"):
        build_corpus("short text")


def test_load_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    c = load_text(path)
    assert c.decode(torch.cat([c.train, c.val, c.test])) == TEXT
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.txt")):
        load_text(tmp_path / "none.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not UTF-8") as err:
        load_text(bad)
    assert str(bad) in str(err.value)


def test_batchify_and_chunks_against_a_loop():
    ids = torch.arange(103)
    b = batchify(ids, 4)  # 25 per row, 3 dropped
    assert b.shape == (4, 25)
    for row in range(4):
        assert b[row].tolist() == list(range(25 * row, 25 * row + 25))
    pairs = list(chunks(b, 10))
    assert [x.shape[1] for x, _ in pairs] == [10, 10, 4]
    for start, (x, y) in zip((0, 10, 20), pairs):
        for row in range(4):
            for t in range(x.shape[1]):
                assert x[row, t] == 25 * row + start + t
                assert y[row, t] == 25 * row + start + t + 1
    with pytest.raises(ValueError, match="batch_size"):
        batchify(ids, 60)


BIBLE_OUTPUT = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep. And the Spirit of God moved upon the face of the waters.
  10 And God called the dry land Earth; and the gathering together of the waters
called he Seas: and God saw that it was good.

1 Kings 2

  1 Now the days of David drew nigh that he should die; and he charged Solomon
his son, saying,
"""


def test_strip_bible_references():
    assert strip_bible_references(BIBLE_OUTPUT) == (
        "In the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep. "
        "And the Spirit of God moved upon the face of the waters.\n"
        "And God called the dry land Earth; and the gathering together of the waters called he "
        "Seas: and God saw that it was good.\n"
        "Now the days of David drew nigh that he should die; and he charged Solomon his son, "
        "saying,\n")


def fake_bible(tmp_path, output):
    (tmp_path / "out.txt").write_text(output)
    script = tmp_path / "bible"
    script.write_text(f"#!/bin/sh\ncat '{tmp_path / 'out.txt'}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_kjv_through_the_program(tmp_path, monkeypatch):
    fake_bible(tmp_path, BIBLE_OUTPUT * 20)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    text = kjv_text(str(tmp_path / "bible"))
    assert text == strip_bible_references(BIBLE_OUTPUT) * 20
    c = load_kjv(str(tmp_path / "bible"))
    assert c.decode(torch.cat([c.train, c.val, c.test])) == text
    assert not any(ch.isdigit() for ch in c.vocab)  # verse numbers are gone


def test_kjv_program_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install bible-kjv"):
        kjv_text(str(tmp_path / "no-such-bible"))


def test_kjv_program_printing_nothing(tmp_path):
    script = fake_bible(tmp_path, "")
    with pytest.raises(DataError, match="expected the Bible"):
        kjv_text(str(script))
