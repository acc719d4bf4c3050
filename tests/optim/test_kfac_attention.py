"""KFACSqrt / TSO-ALRA on a transformer (issue 14 defect 6): nn.MultiheadAttention calls its
projections functionally, so their statistics cannot be captured; they get plain SGD and a
warning names them, while the feed-forward Linear layers are preconditioned."""

import warnings

import pytest
import torch
from torch import nn

from polyak.optim import TSOALRA, KFACSqrt


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, 3, generator=g), torch.randint(0, 4, (6,), generator=g)


def test_defect6_attention_gets_plain_sgd_with_a_warning_and_the_rest_is_preconditioned():
    """Reproduces issue 14 defect 6: out_proj's factor A stayed the identity and the fused
    q/k/v weight was not preconditioned, with no warning."""
    model = Encoder()
    with pytest.warns(UserWarning, match="encoder.layers.0.self_attn, "
                                         "encoder.layers.1.self_attn .*plain SGD"):
        opt = TSOALRA(model, lr=0.05, switch_epoch=2, damping=1e-2)
    names = {m: n for n, m in model.named_modules()}
    layers = [names[m] for m in opt.layers]
    assert layers == ["embed", "encoder.layers.0.linear1", "encoder.layers.0.linear2",
                      "encoder.layers.1.linear1", "encoder.layers.1.linear2", "head"]
    attn = model.encoder.layers[0].self_attn
    before = {n: p.detach().clone() for n, p in attn.named_parameters()}
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # every preconditioned layer saw its statistics
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
        opt.step()
    for n, p in attn.named_parameters():       # plain SGD: w - lr * g, exactly
        assert torch.equal(p, before[n].add(grads[n], alpha=-0.05)), n
    eye = torch.eye(9)
    assert not torch.allclose(opt.state[model.encoder.layers[0].linear1.weight]["A"], eye)


def test_a_layer_used_functionally_elsewhere_is_named_once():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return nn.functional.linear(torch.tanh(self.a(x)), self.b.weight, self.b.bias)

    model = Functional()
    opt = KFACSqrt(model, lr=0.1)
    x = torch.randn(5, 3)
    with pytest.warns(UserWarning, match="no statistics for b in the first step"):
        model(x).pow(2).mean().backward()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
