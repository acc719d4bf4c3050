import math

import pytest
import torch
from torch import nn

from polyak.analysis.diversity import diversity, symmetric_kl, total_variation


def fixed_logits(logits):
    """A model whose output is ``logits`` for every input: zero weights, bias = logits."""
    m = nn.Linear(2, len(logits))
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor(logits))
    return m


def hand_sym_kl(p, q):
    return 0.5 * sum(pi * math.log(pi / qi) + qi * math.log(qi / pi) for pi, qi in zip(p, q))


def test_symmetric_kl_and_total_variation_of_known_distributions():
    p, q = [0.5, 0.5], [0.9, 0.1]
    # 1/2 (0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) + 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5))
    expected = 0.5 * (0.5 * math.log(5 / 9) + 0.5 * math.log(5) + 0.9 * math.log(1.8)
                      + 0.1 * math.log(0.2))
    lp, lq = torch.tensor(p).log().double(), torch.tensor(q).log().double()
    assert symmetric_kl(lp, lq).item() == pytest.approx(expected, rel=1e-6)
    assert total_variation(torch.tensor(p), torch.tensor(q)).item() == pytest.approx(0.4)


def test_identical_models_have_zero_diversity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    batches = [(torch.randn(6, 3), None), (torch.randn(4, 3), None)]
    w = [p.detach().clone() for p in model.parameters()]
    result = diversity([w, w, w], model, batches)
    assert result.symmetric_kl == 0.0 and result.total_variation == 0.0
    assert result.pairs == 3


def test_pairwise_mean_over_modules_and_weights_matches_hand_computation():
    logits = [[0.0, 0.0], [math.log(9.0), 0.0], [0.0, math.log(3.0)]]  # p = .5/.5, .9/.1, .25/.75
    probs = [[0.5, 0.5], [0.9, 0.1], [0.25, 0.75]]
    models = [fixed_logits(z) for z in logits]
    batches = [torch.randn(7, 2), torch.randn(3, 2)]
    pairs = [(0, 1), (0, 2), (1, 2)]
    kl = sum(hand_sym_kl(probs[i], probs[j]) for i, j in pairs) / 3
    tv = sum(0.5 * sum(abs(a - b) for a, b in zip(probs[i], probs[j])) for i, j in pairs) / 3
    result = diversity(models, None, batches)
    assert result.symmetric_kl == pytest.approx(kl, rel=1e-6)
    assert result.total_variation == pytest.approx(tv, rel=1e-6)
    # the same iterates given as state dicts loaded into one template model
    template = fixed_logits([0.0, 0.0])
    before = [p.detach().clone() for p in template.parameters()]
    states = [{n: p.detach() for n, p in m.named_parameters()} for m in models]
    again = diversity(states, template, batches)
    assert again.symmetric_kl == pytest.approx(kl, rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(template.parameters(), before))


def test_invalid_inputs():
    m = fixed_logits([0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        diversity([m], None, [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="model"):
        diversity([[p.detach() for p in m.parameters()]] * 2, None, [torch.randn(2, 2)])
