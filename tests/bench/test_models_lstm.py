"""Character LSTM: parameter count of torch's LSTM equations, state carrying, the loss falls."""

import math

import pytest
import torch

from polyak.bench.data.text import batchify, build_corpus, chunks
from polyak.bench.models._layers import count_parameters
from polyak.bench.models.lstm import CharLSTM, detach_state


def lstm_params(V, E, H, layers):
    """Embedding V*E; per layer four gates W_ih (4H x in), W_hh (4H x H), two 4H biases;
    decoder H*V + V."""
    total, d = V * E, E
    for _ in range(layers):
        total += 4 * H * (d + H) + 2 * 4 * H
        d = H
    return total + H * V + V


def test_count_and_shapes():
    model = CharLSTM(50, embed_dim=16, hidden_size=32, num_layers=2)
    assert count_parameters(model) == lstm_params(50, 16, 32, 2)
    logits, (h, c) = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50) and h.shape == c.shape == (2, 3, 32)


def test_tied_weights_are_one_tensor_counted_once():
    model = CharLSTM(30, embed_dim=24, hidden_size=24, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert count_parameters(model) == lstm_params(30, 24, 24, 2) - 30 * 24
    with pytest.raises(ValueError, match="tie_weights"):
        CharLSTM(30, embed_dim=16, hidden_size=24, tie_weights=True)


def test_carrying_the_state_equals_one_long_pass():
    torch.manual_seed(0)
    model = CharLSTM(11, embed_dim=8, hidden_size=12).eval()
    ids = torch.randint(0, 11, (2, 10))
    whole, _ = model(ids)
    first, state = model(ids[:, :6], model.init_state(2))
    second, _ = model(ids[:, 6:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_loss_falls_on_a_repetitive_corpus():
    torch.manual_seed(0)
    corpus = build_corpus("the cat sat on the mat. " * 60)
    model = CharLSTM(corpus.vocab_size, embed_dim=16, hidden_size=48)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = batchify(corpus.train, 8)
    losses, state = [], None
    for _ in range(4):
        for x, y in chunks(data, 20):
            logits, state = model(x, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, corpus.vocab_size),
                                                     y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state = detach_state(state)
            losses.append(loss.item())
    assert len(losses) >= 30
    assert abs(losses[0] - math.log(corpus.vocab_size)) < 0.3  # starts near chance
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        CharLSTM(0)
    with pytest.raises(ValueError, match="dropout"):
        CharLSTM(10, dropout=1.0)
