"""Fixtures of the benchmark tests: a tiny MNIST-1D task (a few hundred examples, 2 epochs)."""

import pytest

from polyak.bench.tasks import get_task


@pytest.fixture(scope="session")
def mnist1d_root(tmp_path_factory):
    """A private cache directory for generated MNIST-1D splits (shared by the session)."""
    return tmp_path_factory.mktemp("mnist1d-cache")


@pytest.fixture(scope="session")
def tiny_task(mnist1d_root):
    """mnist1d-cnn shrunk: 256 train / 100 val / 200 test examples, 8 channels, 2 epochs."""
    return get_task("mnist1d-cnn").replace(
        data_kwargs={"n_train": 256, "n_val": 100, "n_test": 200, "root": str(mnist1d_root)},
        model_kwargs={"channels": 8, "batchnorm": True}, batch_size=64, epochs=2,
        eval_batch_size=100, tuned_path=mnist1d_root / "no-tuned-lrs.json",
    )


@pytest.fixture(scope="session")
def tiny_mlp_task(mnist1d_root):
    """mnist1d-mlp shrunk the same way."""
    return get_task("mnist1d-mlp").replace(
        data_kwargs={"n_train": 256, "n_val": 100, "n_test": 200, "root": str(mnist1d_root)},
        model_kwargs={"hidden": 16}, batch_size=64, epochs=2, eval_batch_size=100,
        tuned_path=mnist1d_root / "no-tuned-lrs.json",
    )


@pytest.fixture
def fresh(monkeypatch):
    """Empty caches of user task files, as in a new worker process (restored afterwards)."""
    from polyak.bench import user_tasks

    monkeypatch.setattr(user_tasks, "_LOADED", {})
    monkeypatch.setattr(user_tasks, "_MODULES", {})

