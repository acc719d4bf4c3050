"""``polyak igd``, ``polyak nqm``, ``polyak stability``: the theory tools from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polyak.cli import UserError, app

Opt = typer.Option


def _positive_int(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"Invalid {name}: {value} (an integer >= 1)")


def _check_out(out: Path) -> None:
    if not out.parent.is_dir():
        raise UserError(f"Invalid out: {out} (directory {out.parent} does not exist)")


@app.command("igd")
def igd_command(
    rows: Annotated[int, Opt(help="N, rows of A (the IGD components).")] = 20,
    dim: Annotated[int, Opt(help="n, columns of A.")] = 5,
    mu: Annotated[float, Opt(help="Regularization weight (D = I).")] = 0.1,
    seed: Annotated[int, Opt(help="Seed of the random problem.")] = 0,
    epochs: Annotated[int, Opt(help="IGD epochs per step size in the error panel.")] = 100,
    out: Annotated[Path, Opt(help="PNG file to write.")] = Path("igd.png"),
) -> None:
    """Incremental gradient descent on random least squares: bounds and SGDL's Figure 2."""
    from polyak.analysis import least_squares as ls
    from polyak.analysis.plots import plot_igd

    _positive_int("rows", rows)
    _positive_int("dim", dim)
    _positive_int("epochs", epochs)
    _check_out(out)
    problem = ls.random_least_squares(rows, dim, mu, seed=seed)
    A, D = problem.A, problem.D
    bound = ls.igd_sufficient_bound(A, mu, D)
    critical = ls.igd_critical_step(A, mu, D)
    lines = [
        ("gradient descent bound 2/lambda_max(A'A + mu D)", ls.gd_bound(problem.hessian)),
        ("the paper's IGD bound 2N/rho(mu D + A'A)", bound),
        ("measured critical IGD step (rho(K_N(t)) = 1)", critical),
        ("rho(K_N(t)) at the paper's bound", ls.igd_spectral_radius(A, mu, D, bound)),
    ]
    for label, value in lines:
        typer.echo(f"{label + ':':<50} {value:.6g}")
    typer.echo(f"wrote {plot_igd(problem, out, epochs=epochs)}")


@app.command("nqm")
def nqm_command(
    dim: Annotated[int, Opt(help="Dimensions d; curvatures h_i = i^-exponent.")] = 100,
    exponent: Annotated[float, Opt(help="Power-law exponent of the spectrum.")] = 1.0,
    noise: Annotated[str, Opt(help="Gradient noise: isotropic (c) or curvature (c*h_i).")] = (
        "isotropic"),
    c: Annotated[float, Opt(help="Noise scale.")] = 1.0,
    batch_size: Annotated[int, Opt(help="Batch size B (noise variance / B).")] = 1,
    lr: Annotated[float, Opt(help="Learning rate.")] = 0.5,
    epochs: Annotated[int, Opt(help="Epochs (averages collect once per epoch).")] = 160,
    steps_per_epoch: Annotated[int, Opt(help="Optimizer steps per epoch.")] = 10,
    out: Annotated[Path, Opt(help="PNG file to write.")] = Path("nqm.png"),
) -> None:
    """Noisy quadratic model: exact expected loss of averaging against learning-rate decay."""
    from polyak.analysis.nqm import NoisyQuadratic, compare_methods
    from polyak.analysis.plots import plot_nqm

    _check_out(out)
    problem = NoisyQuadratic.power_law(dim, exponent=exponent, noise=noise, c=c,
                                       batch_size=batch_size)
    results = compare_methods(problem, lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    table = Table(show_header=True, header_style="bold")
    table.add_column("method")
    table.add_column("final E[L]", justify="right")
    for name, losses in sorted(results.items(), key=lambda item: item[1][-1]):
        table.add_row(name, f"{losses[-1]:.5g}")
    Console(width=100).print(table)
    settings = (f"d={dim}, h_i = i^-{exponent:g}, {noise} noise c={c:g}, batch {batch_size}, "
                f"lr {lr:g}, {epochs} epochs of {steps_per_epoch} steps, x0 = 1")
    figure = plot_nqm(results, out, steps_per_epoch=steps_per_epoch, subtitle=settings)
    typer.echo(f"wrote {figure}")


def _load_checkpoint(model, path: Path) -> float | None:
    """Load a checkpoint (``weights_only=True``) into ``model``; returns its learning rate."""
    from polyak.bench.checkpoints import load_checkpoint

    data = load_checkpoint(path)
    state = data["model"]
    for key in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"Invalid checkpoint {path}: {str(exc).splitlines()[0]}") from None
    return data.get("lr")


def _task(name: str):
    try:
        from polyak.bench.tasks import get_task

        return get_task(name)
    except ImportError:
        raise UserError("the benchmark task registry (polyak.bench.tasks) is missing") from None
    except KeyError:
        raise UserError(f"Invalid task: {name!r} (see `polyak list` for task names)") from None


def _data_and_model(task, seed: int):
    """The task's training and test inputs as the model sees them (standardized, not
    augmented), their labels, and a fresh model seeded like a benchmark run."""
    import torch

    from polyak.bench.train import make_model, task_splits, transforms

    if getattr(task, "kind", "classification") != "classification":
        raise UserError(f"polyak stability needs a classification task; {task.name} is "
                        f"{task.kind!r}")
    splits, mean, std = task_splits(task)
    _, eval_tf = transforms(task, mean, std, seed, splits.x_train.device)
    def inputs(x):
        return x if eval_tf is None else eval_tf(x)

    torch.manual_seed(seed)
    return (inputs(splits.x_train), splits.y_train, inputs(splits.x_test), splits.y_test,
            make_model(task, splits))


@app.command("stability")
def stability_command(
    task: Annotated[str, Opt(help="Benchmark task name (see `polyak list`).")],
    checkpoint: Annotated[Path | None, Opt(help="Model state dict (torch.save) to load.")] = None,
    checkpoints: Annotated[Path | None, Opt(
        help="A run's checkpoint directory (polyak bench --keep-checkpoints): the model at "
             "initialization and at every kept epoch.")] = None,
    batches: Annotated[int, Opt(help="Training batches in the full-batch loss.")] = 4,
    batch_size: Annotated[int, Opt(help="Examples per batch.")] = 128,
    beta: Annotated[float, Opt(help="Momentum for the heavy-ball bound.")] = 0.9,
    max_iter: Annotated[int, Opt(help="Power-iteration steps at most.")] = 100,
    tol: Annotated[float, Opt(help="Relative tolerance on the eigenvalue.")] = 1e-4,
    seed: Annotated[int, Opt(help="Seed of the model and of the start vector.")] = 0,
) -> None:
    """Largest Hessian eigenvalue of a task's training loss and the stable learning rates."""
    import torch.nn.functional as F

    from polyak.analysis.hessian import top_hessian_eigenvalue

    _positive_int("batches", batches)
    _positive_int("batch-size", batch_size)
    if checkpoint is not None and checkpoints is not None:
        raise UserError("Give --checkpoint or --checkpoints, not both")
    points: list[tuple[str, Path | None]] = [("init", None)]
    if checkpoint is not None:
        points = [(checkpoint.name, checkpoint)]
    elif checkpoints is not None:
        from polyak.bench.checkpoints import list_checkpoints

        points += [(p.stem, p) for p in list_checkpoints(checkpoints)]
    x_train, y_train, _, _, model = _data_and_model(_task(task), seed)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    n = min(batches * batch_size, len(x_train))
    data = [(x_train[i:i + batch_size], y_train[i:i + batch_size])
            for i in range(0, n, batch_size)]
    table = Table(show_header=True, header_style="bold")
    for column in ("weights", "lambda_max", "iterations", "2/lambda (GD)",
                   f"2(1+{beta:g})/lambda (heavy ball)", "lr of the run", "lr x lambda/2"):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for label, path in points:
        model.load_state_dict(initial)
        lr = _load_checkpoint(model, path) if path is not None else None
        model.train()
        res = top_hessian_eigenvalue(model, F.cross_entropy, data, tol=tol, max_iter=max_iter,
                                     seed=seed)
        iters = f"{res.iterations}" + ("" if res.converged else " (not converged)")
        table.add_row(label, f"{res.lambda_max:.5g}", iters, f"{res.gd_bound:.5g}",
                      f"{res.heavy_ball_bound(beta):.5g}",
                      "" if lr is None else f"{lr:.4g}",
                      "" if lr is None else f"{lr / res.gd_bound:.3g}")
    Console(width=120).print(table)


def _batches(x, y, n: int, batch_size: int) -> list:
    n = min(n, len(x))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


@app.command("probe")
def probe_command(
    task: Annotated[str, Opt(help="Benchmark task name (see `polyak list`).")],
    checkpoints: Annotated[Path, Opt(
        help="A run's checkpoint directory (polyak bench --keep-checkpoints).")],
    points: Annotated[int, Opt(help="Points on the segment, end points included.")] = 11,
    examples: Annotated[int, Opt(help="Train/test examples used at each point.")] = 2000,
    batch_size: Annotated[int, Opt(help="Examples per batch.")] = 500,
    out: Annotated[Path, Opt(help="PNG file (loss and accuracy along the probes).")] = Path(
        "probe.png"),
) -> None:
    """Loss surface along a run: the segment from its first to its last checkpoint, two-point
    averages of the last with each earlier one (PWA Figs. 2-3), and iterate diversity (Gadam
    Fig. 4). BatchNorm is recalibrated at every probed point."""
    import numpy as np
    import torch.nn.functional as F

    from polyak.analysis import diversity, plot_probe, segment_losses, two_point_average_losses
    from polyak.analysis.probes import Probe
    from polyak.bench.checkpoints import list_checkpoints, load_checkpoint

    for name, value in (("points", points), ("examples", examples), ("batch-size", batch_size)):
        _positive_int(name, value)
    if points < 2:
        raise UserError(f"Invalid points: {points} (at least 2: the end points)")
    _check_out(out)
    files = list_checkpoints(checkpoints)
    if len(files) < 2:
        raise UserError(f"{checkpoints} has {len(files)} checkpoint; the probes need 2 or more")
    x_train, y_train, x_test, y_test, model = _data_and_model(_task(task), 0)
    names = {n for n, _ in model.named_parameters()}
    iterates = [{k: v for k, v in load_checkpoint(f)["model"].items() if k in names}
                for f in files]
    train = _batches(x_train, y_train, examples, batch_size)
    test = _batches(x_test, y_test, examples, batch_size)
    alphas = [i / (points - 1) for i in range(points)]
    seg = {split: segment_losses(model, iterates[0], iterates[-1], F.cross_entropy, data,
                                 alphas, bn_loader=train)
           for split, data in (("train", train), ("test", test))}
    ks = list(range(len(iterates)))
    two = two_point_average_losses(model, iterates, F.cross_entropy, test, ks, bn_loader=train)
    div = diversity(iterates, model, test)
    table = Table(title=f"{files[0].stem} -> {files[-1].stem}", header_style="bold")
    for column in ("alpha", "train loss", "test loss", "test acc"):
        table.add_column(column, justify="right")
    for i, alpha in enumerate(alphas):
        table.add_row(f"{alpha:.2f}", f"{seg['train'].loss[i]:.4f}", f"{seg['test'].loss[i]:.4f}",
                      f"{seg['test'].accuracy[i]:.4f}")
    Console(width=100).print(table)
    pairs = Table(title=f"(theta_last + theta_k)/2 on test, last = {files[-1].stem}",
                  header_style="bold")
    for column in ("theta_k", "test loss", "test acc"):
        pairs.add_column(column, justify="right")
    for k in ks:
        pairs.add_row(files[-1 - k].stem, f"{two.loss[k]:.4f}", f"{two.accuracy[k]:.4f}")
    Console(width=100).print(pairs)
    typer.echo(f"diversity of the {len(iterates)} iterates on test: symmetric KL "
               f"{div.symmetric_kl:.4g}, total variation {div.total_variation:.4g}")
    ends = f"theta_first = {files[0].stem}, theta_last = {files[-1].stem}"
    epochs = [_epoch_of(f) for f in files]
    pairs = Probe(np.array([epochs[-1 - k] for k in ks], dtype=float), two.loss, two.accuracy)
    figure = plot_probe(
        seg, out, xlabel="alpha",
        title=f"{task}: probes of the run in {checkpoints}\nalpha: the point "
              f"(1 - alpha) theta_first + alpha theta_last of the segment ({ends})", pairs=pairs,
        pairs_label="epoch of theta_k (0-based)",
        diversity=f"diversity of the {len(iterates)} iterates on test: symmetric KL "
                  f"{div.symmetric_kl:.4g}, total variation {div.total_variation:.4g}")
    typer.echo(f"wrote {figure}")


def _epoch_of(path: Path) -> int:
    """``epoch<e>.pt`` -> e."""
    return int("".join(ch for ch in path.stem if ch.isdigit()))
