"""The character language-model task: its data as truncated-BPTT chunks, its epoch and its metrics.

Stands in for the papers' word-level PTB LSTMs (Gadam Sec. 5.4; the vanilla-SGD paper Sec. 6.4)
at CPU size (:mod:`polyak.bench.data.text`, :mod:`polyak.bench.models.lstm`). Truncated
backpropagation through time (Williams & Peng 1990; the AWD-LSTM code's ``batchify``/``get_batch``
layout): each split's character stream is cut into ``B`` contiguous rows (``batchify``) and each
row into chunks of ``seq_len`` characters; chunk ``k`` of every row forms batch ``k``, and the
LSTM's hidden state is carried from batch ``k`` to ``k + 1`` (detached: gradients stop at chunk
boundaries). The order is the text's, not shuffled, and the state starts at zero every epoch.
Unlike the AWD-LSTM recipe there is no gradient clipping and the chunk length is fixed:
``Method.step`` is the whole update (closure, backward, step) and has no hook between the
backward pass and the step.

As :class:`~polyak.bench.data.Splits`: ``x_train[k * B + b]`` is the input of chunk ``k`` of row
``b`` (``seq_len`` ids) and ``y_train`` the same characters shifted by one (the targets); the
last partial chunk of each row is dropped so all chunks are full. ``num_classes`` is the
vocabulary size. Metrics: the loss is the mean negative log-likelihood in nats per character and
the "accuracy" is next-character accuracy (argmax of the logits).

Corpus: ``corpus.txt`` (any UTF-8 text) in the ``data_dir`` given, else the file named by
``$POLYAK_TEXT``, else the King James Bible of Debian's ``bible-kjv`` (its ``bible`` program).
:func:`corpus_source` names the one used; it joins the run identity, so results on different
texts never mix in the store.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.data import Splits
from polyak.bench.data.text import CharCorpus, batchify, build_corpus, kjv_text, load_text

__all__ = ["CORPUS_FILE", "TEXT_ENV", "find_corpus", "corpus_source", "load_char_lm",
           "chunked", "train_epoch_lm", "evaluate_lm"]

CORPUS_FILE = "corpus.txt"
TEXT_ENV = "POLYAK_TEXT"
_HASHES: dict[tuple[str, float, int], str] = {}


def find_corpus(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir/corpus.txt``, ``data_dir/text/corpus.txt``, then ``$POLYAK_TEXT``; ``None``
    means the King James Bible. A ``$POLYAK_TEXT`` naming no file is a ``FileNotFoundError``."""
    if data_dir is not None:
        for candidate in (Path(data_dir) / CORPUS_FILE, Path(data_dir) / "text" / CORPUS_FILE):
            if candidate.is_file():
                return candidate
    env = os.environ.get(TEXT_ENV)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"Text corpus not found: ${TEXT_ENV} names {env}, which is "
                                    "not a file (unset it to use the King James Bible)")
        return Path(env)
    return None


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return _HASHES[key]


def corpus_source(data_dir: str | Path | None = None, **_: Any) -> str:
    """Which text a run reads: ``"kjv (bible-kjv)"`` or ``"corpus.txt sha256:<16 hex>"``."""
    path = find_corpus(data_dir)
    return "kjv (bible-kjv)" if path is None else f"{CORPUS_FILE} sha256:{_sha256(path)}"


def chunked(ids: torch.Tensor, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of shape ``(chunks * rows, seq_len)`` (chunk-major): the stream in
    ``rows`` contiguous rows, each cut into full chunks of ``seq_len`` characters."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"Invalid seq_len: {seq_len!r} (allowed: an integer >= 1)")
    table = batchify(ids, rows)                      # (rows, T)
    n = (table.shape[1] - 1) // seq_len
    if n < 1:
        raise ValueError(f"Invalid seq_len: {seq_len} (rows of {table.shape[1]} characters hold "
                         "no full chunk plus its target)")
    x = table[:, :n * seq_len].reshape(rows, n, seq_len).transpose(0, 1)
    y = table[:, 1:n * seq_len + 1].reshape(rows, n, seq_len).transpose(0, 1)
    return x.reshape(n * rows, seq_len).contiguous(), y.reshape(n * rows, seq_len).contiguous()


def load_char_lm(data_dir: str | Path | None = None, *, batch_size: int, eval_batch_size: int,
                 seq_len: int = 64, max_chars: int | None = None, val_fraction: float = 0.05,
                 test_fraction: float = 0.05) -> Splits:
    """The corpus (see :func:`find_corpus`) as truncated-BPTT :class:`Splits`: training rows of
    ``batch_size`` streams, validation and test of ``eval_batch_size`` streams."""
    path = find_corpus(data_dir)
    kwargs = dict(val_fraction=val_fraction, test_fraction=test_fraction, max_chars=max_chars)
    corpus: CharCorpus = build_corpus(kjv_text(), **kwargs) if path is None else \
        load_text(path, **kwargs)
    x_train, y_train = chunked(corpus.train, batch_size, seq_len)
    x_val, y_val = chunked(corpus.val, eval_batch_size, seq_len)
    x_test, y_test = chunked(corpus.test, eval_batch_size, seq_len)
    return Splits(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test,
                  y_test=y_test, num_classes=corpus.vocab_size)


def _detach(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return state[0].detach(), state[1].detach()


def _nll_and_hits(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = out.reshape(-1, out.shape[-1])
    loss = F.cross_entropy(logits, target.reshape(-1))
    return loss, (logits.detach().argmax(1) == target.reshape(-1)).sum()


def train_epoch_lm(method: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int) -> tuple[float, float]:
    """One pass over the chunks in order, the state carried across them; (mean NLL, accuracy)
    of the clean forward passes (the first closure call of each step)."""
    model.train()
    loss_sum = torch.zeros((), device=x.device)
    hits = torch.zeros((), dtype=torch.long, device=x.device)
    state: list = [None]
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        first = [True]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb, first: list = first,
                    start: Any = state[0]) -> torch.Tensor:
            out, new_state = model(xb, start)
            loss, correct = _nll_and_hits(out, yb)
            if first[0]:  # SAM's second (perturbed) pass neither counts nor moves the state
                first[0] = False
                state[0] = _detach(new_state)
                loss_sum.add_(loss.detach() * yb.numel())
                hits.add_(correct)
            return loss

        method.step(closure)
    return loss_sum.item() / y.numel(), hits.item() / y.numel()


@torch.no_grad()
def evaluate_lm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
                ) -> tuple[float, float]:
    """Mean NLL (nats/char) and next-character accuracy over the chunks, state carried."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    hits = torch.zeros((), dtype=torch.long, device=x.device)
    state = None
    for i in range(0, len(x), batch_size):
        out, state = model(x[i:i + batch_size], state)
        target = y[i:i + batch_size].reshape(-1)
        logits = out.reshape(-1, out.shape[-1])
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        hits += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return loss_sum.item() / y.numel(), hits.item() / y.numel()
