"""PWA Table 1c's "aggregated at the end only" (FinalPhase) against an explicit weighted sum of
the last phase's iterates, on a run it never changes."""

from __future__ import annotations

import copy

import pytest
import torch
from avg_helpers import mlp, params_of, regression_data, train_epoch

from polyak.averaging import FinalPhase, phase_weights


def run(phases, with_average):
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    avg = FinalPhase(model, phases) if with_average else None
    data = regression_data()
    iterates = []
    for epoch in range(sum(phases)):
        train_epoch(model, opt, data)
        iterates.append([p.detach().clone() for p in model.parameters()])
        if avg is not None:
            avg.end_epoch(epoch)
    return model, avg, iterates


@pytest.mark.parametrize("phases", [[4, 2, 2], [6], [3, 5]])
def test_the_last_phase_aggregate_is_reported_and_the_run_is_untouched(phases):
    model, avg, iterates = run(phases, True)
    plain, _, plain_iterates = run(phases, False)
    # never injected: the run is the plain run, bit for bit
    assert all(torch.equal(a, b) for it, jt in zip(iterates, plain_iterates)
               for a, b in zip(it, jt))
    T = phases[-1]
    gamma = 0.9 ** (80 / T)
    weights = phase_weights(T, gamma)
    last = iterates[-T:]
    want = [sum(w * it[i].double() for w, it in zip(weights, last))
            for i in range(len(last[0]))]
    assert avg.reports_average and avg.has_average
    with avg.applied(model):
        for p, w in zip(model.parameters(), want):
            assert torch.allclose(p.double(), w, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_of(plain)))


def test_an_earlier_phase_is_discarded_and_the_state_round_trips():
    model, avg, iterates = run([3, 2], True)
    state = copy.deepcopy(avg.state_dict())
    other = FinalPhase(copy.deepcopy(model), [3, 2])
    other.load_state_dict(state)
    assert other.n_averaged == avg.n_averaged == 2
    assert all(torch.equal(a, b) for a, b in zip(other.averaged(), avg.averaged()))
    with pytest.raises(ValueError, match="phases"):
        FinalPhase(mlp(), [3, 3]).load_state_dict(state)
