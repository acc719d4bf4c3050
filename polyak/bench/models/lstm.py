"""A 2-layer LSTM character language model (embedding, LSTM, linear decoder).

Stands in for the papers' word-level PTB LSTMs (Gadam Sec. 5.4: 3-layer AWD-LSTM; vanilla-SGD
paper Sec. 6.4: 2- and 3-layer LSTMs, Merity et al.'s recipe) at a size a CPU trains: the
benchmark models characters (:mod:`polyak.bench.data.text`). Default sizes: embedding 64, hidden
256, 2 layers, no dropout; ``tie_weights`` shares the embedding and decoder matrices (Inan et
al. 2016; needs ``embed_dim == hidden_size``). Trained with truncated backpropagation through
time: feed the returned state to the next chunk after :func:`detach_state`.
"""

from __future__ import annotations

import torch
from torch import nn

from polyak.bench.models._layers import check_int

__all__ = ["CharLSTM", "char_lstm", "detach_state"]

State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
    """Embedding -> ``num_layers``-layer LSTM -> (dropout) -> Linear to ``vocab_size`` logits."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 256,
                 num_layers: int = 2, dropout: float = 0.0, tie_weights: bool = False) -> None:
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                            ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(name, value)
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (allowed: 0 <= dropout < 1)")
        if tie_weights and embed_dim != hidden_size:
            raise ValueError(f"Invalid tie_weights: True needs embed_dim == hidden_size "
                             f"(got {embed_dim} and {hidden_size})")
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        self.num_layers, self.hidden_size = num_layers, hidden_size

    def init_state(self, batch_size: int) -> State:
        """Zero hidden and cell states for a batch."""
        weight = self.decoder.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (weight.new_zeros(shape), weight.new_zeros(shape))

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``ids`` (B, T) -> logits (B, T, vocab_size) and the final state."""
        out, state = self.lstm(self.embedding(ids), state)
        return self.decoder(self.drop(out)), state


def detach_state(state: State) -> State:
    """Cut the graph between chunks (truncated BPTT)."""
    return (state[0].detach(), state[1].detach())


def char_lstm(vocab_size: int = 64, embed_dim: int = 64, hidden_size: int = 256,
              num_layers: int = 2) -> CharLSTM:
    """2-layer LSTM character language model (embedding 64, hidden 256 by default)."""
    return CharLSTM(vocab_size, embed_dim, hidden_size, num_layers)
