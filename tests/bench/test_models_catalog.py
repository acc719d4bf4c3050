"""The model catalogue: every name builds, and the table reports its parameter count."""

import torch

from polyak.bench.models.catalog import MODELS, REFERENCE, count_parameters, model_table


def test_count_parameters_against_a_manual_sum():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == 3 * 4 + 4 + 4  # frozen BN weight and buffers excluded
    assert count_parameters(model, trainable_only=False) == 3 * 4 + 4 + 4 + 4


def test_table_covers_every_model_with_the_published_counts():
    rows = {name: (params, text) for name, params, text in model_table()}
    assert set(rows) == set(MODELS) == set(REFERENCE)
    published = {"resnet20": 269_722, "resnet56": 853_018, "wrn28-10": 36_479_194,
                 "densenet-bc100": 769_162, "vgg16-bn": 15_299_748}
    for name, count in published.items():
        assert rows[name][0] == count
    for name, (params, text) in rows.items():
        assert params > 0 and text and REFERENCE[name][0] in text
