"""``polyak bench``, ``polyak report`` and ``polyak tune``: the benchmark from the command line.

Everything the user typed is checked (tasks, methods and their keys, positive numbers, the store
file) before the store is written; bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markdown import Markdown

from polyak.cli import app, fail

DEFAULT_STORE = "polyak-runs.sqlite"
DEFAULT_TUNE_STORE = "polyak-tune.sqlite"
DEFAULT_OUT = "polyak-report"


def split_specs(text: str) -> list[str]:
    """``"sgdm,gadamx:lr=0.05,avg_start=20,swa"`` -> ``["sgdm", "gadamx:lr=0.05,avg_start=20",
    "swa"]``: a comma piece with ``=`` but no ``:`` continues the previous spec's overrides."""
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    if not specs:
        fail(f"Invalid list: {text!r} (allowed: comma-separated names)")
    return specs


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        fail(f"Invalid {name}: {value} (allowed: an integer >= 1)")


def _tasks(text: str | None, device: str = "cpu", data_dir: str | None = None) -> list:
    """The named tasks (default mnist1d-cnn) set to train on ``device`` and to look for their
    data in ``data_dir`` first: built-in names, and the user's ``FILE.py:NAME`` /
    ``module:NAME`` (:mod:`polyak.bench.user_tasks`: run and checked here, before any store is
    opened)."""
    from polyak.bench.tasks import DEFAULT_TASK, get_task
    from polyak.bench.user_tasks import is_user_spec, load_task

    names = split_specs(text) if text is not None else [DEFAULT_TASK]
    found = [(load_task(name) if is_user_spec(name) else get_task(name))
             .replace(device=device, data_dir=data_dir) for name in dict.fromkeys(names)]
    seen: dict[str, str] = {}
    for name, task in zip(dict.fromkeys(names), found):
        if task.name in seen:
            fail(f"Invalid tasks: {seen[task.name]} and {name} are both called {task.name} "
                 "(a task's name is its function's: rename one)")
        seen[task.name] = name
    return found


def _task_arg(task) -> str:
    """How the command line names ``task`` (a user's task: its FILE.py:NAME)."""
    return task.user.spec if task.user is not None else task.name


def _with_tuned(tasks: list, text: str | None) -> list:
    """The tasks reading their tuned values from the ``--tuned`` file(s): one file for every
    task, or comma-separated files each applied to the task it names (``polyak tune`` writes
    the task into the file); tasks no file names keep their shipped values."""
    if text is None:
        return tasks
    paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
    for path in paths:
        if not path.is_file():
            fail(f"Invalid tuned: {path} is not a file (write one with `polyak tune --out FILE`)")
    if len(paths) == 1:
        return [t.replace(tuned_path=paths[0]) for t in tasks]
    by_task: dict[str, Path] = {}
    for path in paths:
        try:
            named = json.loads(path.read_text()).get("task")
        except (ValueError, AttributeError):
            named = None
        if not isinstance(named, str):
            fail(f"Invalid tuned: {path} names no task; with several --tuned files each must be "
                 "a file `polyak tune --out` wrote")
        if named in by_task:
            fail(f"Invalid tuned: {by_task[named]} and {path} are both tuned for {named}")
        by_task[named] = path
    unknown = sorted(set(by_task) - {t.name for t in tasks})
    if unknown:
        fail(f"Invalid tuned: files for {', '.join(unknown)}, which this command does not run "
             f"(tasks: {', '.join(t.name for t in tasks)})")
    return [t.replace(tuned_path=by_task[t.name]) if t.name in by_task else t for t in tasks]


def _device(name: str, check: bool = True) -> str:
    from polyak.bench.device import resolve_device

    return resolve_device(name, check=check)


def _data_dir(path: str | None) -> str | None:
    if path is not None and not Path(path).is_dir():
        fail(f"Invalid data-dir: {path} is not a directory")
    return path


def _warn_gpu_sized(tasks: list, epochs: int | None) -> None:
    for task in tasks:
        if task.device_hint == "gpu" and task.device == "cpu" and epochs is None:
            typer.echo(f"polyak: note: {task.name} is sized for a GPU ({task.epochs} epochs); "
                       "on the CPU expect days (shorten it with --epochs)", err=True)


def _print_markdown(text: str) -> None:
    if sys.stdout.isatty():
        Console().print(Markdown(text))
    else:
        typer.echo(text)


def _open_store(path: str, must_exist: bool = False):
    from polyak.bench.store import Store

    if must_exist and not Path(path).exists():
        fail(f"No run store at {path} (run `polyak bench` first, or pass --store)")
    return Store(path)


def _extras(keys, tasks) -> dict:
    """Per task: its number of classes (the chance level), the values each reported method ran
    with and the tuned values at a grid's end (for the protocol cards)."""
    from polyak.bench.train import resolve_overrides

    by_name = {t.name: t for t in tasks}
    out: dict = {}
    for key in keys:
        task = by_name[key.task]
        extra = out.setdefault(key.task, {"num_classes": task.num_classes(), "tuned": {},
                                          "edges": task.tuned_edges(),
                                          "outside_claims": task.outside_claims,
                                          "metric": task.metric, "own": task.user is not None})
        if key.method not in extra["tuned"]:
            extra["tuned"][key.method] = resolve_overrides(task, key.method, key.epochs)
    return out


def _report(store, keys, tasks, out: str, notes: list[str], baseline: str | None = None) -> None:
    from polyak.bench.report import write_report

    by_name = {t.name: t for t in tasks}
    info = {t.name: (t.epochs, t.describe()) for t in tasks}
    for key in keys:  # the budget the runs have, described as such (not the task's default)
        info[key.task] = (key.epochs, by_name[key.task].describe(key.epochs))
    text, _ = write_report(store, keys, out, info, notes, baseline=baseline,
                           extras=_extras(keys, tasks))
    _print_markdown(text)
    typer.echo(f"report written to {Path(out) / 'report.md'}", err=True)


def _executor(name: str, address: str | None, cpus: float, gpus: float, retries: int,
              workers: int | None):
    """The executor the options ask for (``None``: the default local pool of ``workers``)."""
    from polyak.bench.executors import make_executor

    if name == "local":
        if address is not None or (cpus, gpus, retries) != (1, 0, 3):
            fail("Invalid options: --ray-address, --cpus-per-run, --gpus-per-run and "
                 "--max-retries go with --executor ray")
        return None
    if workers is not None:
        fail("Invalid workers: with --executor ray the cluster's resources set how many runs "
             "run at once (use --cpus-per-run / --gpus-per-run)")
    return make_executor(name, address=address, cpus_per_run=cpus, gpus_per_run=gpus,
                         max_retries=retries)


def _device_for(device: str, executor) -> str:
    """``--device``; with Ray GPUs per run, ``auto`` means CUDA on the workers (this driver may
    have no GPU of its own)."""
    if executor is not None and executor.gpus_per_run > 0 and device == "auto":
        return "cuda"
    return _device(device, check=executor is None)


EXECUTOR_HELP = ("Where runs execute: local (this machine's process pool) or ray (a Ray "
                 "cluster: RAY_ADDRESS or --ray-address, else a local Ray instance).")
RAY_ADDRESS_HELP = "With --executor ray: the cluster to join (e.g. ray://head:10001 or auto)."
CPUS_HELP = "With --executor ray: CPUs per run (torch threads set to match)."
GPUS_HELP = "With --executor ray: GPUs per run (fractions share a GPU, e.g. 0.25)."
RETRIES_HELP = ("With --executor ray: retries of a run whose worker or node died (it resumes "
                "from its last checkpoint).")
STORE_HELP = "SQLite run store (created when missing)."
DEVICE_HELP = ("Where to train: auto (CUDA if available), cpu or cuda[:N]. On CUDA: data on "
               "the GPU, bf16 autocast, channels-last, one worker by default.")
CHECKPOINT_EVERY_HELP = (
    "Save each run's full state (model, optimizer, averages, RNGs, metrics) every K epochs, or "
    "by time (90s, 10m, 1h), or off; a rerun continues a killed run from it, bit for bit on "
    "the CPU. The checkpoint of a finished run is removed.")
CHECKPOINT_DIR_HELP = ("Where runs keep their resume checkpoints, and --keep-checkpoints "
                       "its <task>/<method>/seed<k>/epoch<e>.pt files.")


def _writable_dir(path: str, flag: str) -> None:
    """Fail (one line, exit 2) unless ``path`` is a directory we can create files in (made
    when missing): checked before anything runs, so a bench never ends unable to write."""
    import errno
    import os

    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = None, target / f".polyak-write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.ENOSPC: "no space left"}.get(exc.errno, exc.strerror or str(exc))
        fail(f"cannot write in {path} ({why}): choose another {flag}")


def _resume_policy(every: str, directory: str):
    from polyak.bench.resume import ResumePolicy, parse_every

    epochs, seconds = parse_every(every)
    return ResumePolicy(Path(directory).resolve(), epochs, seconds)  # absolute: for every node


POSTHOC_HELP = ("Keep each run's snapshots (every epoch, and EDM2's power-EMA profiles) under "
                "--checkpoint-dir, evaluate the default post-hoc averages after training, and "
                "report the best one chosen on validation (`polyak posthoc DIR` reads them).")
DATA_DIR_HELP = ("Directory to look in first for the datasets (and corpus.txt for kjv-lstm); "
                 "default: the loaders' search path (`polyak data list`).")


@app.command("bench")
def bench_command(
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated tasks: built-in names, or "
                              "your own FILE.py:NAME / module:NAME (docs/own-task.md; default "
                              "mnist1d-cnn)."),
    methods: str = typer.Option(None, "--methods",
                                help="Comma-separated methods: arms of the papers' protocols "
                                "(adam@tso-alra, pwa, ...) or recipe specs (default: every arm; "
                                "polyak list shows them)."),
    seeds: int = typer.Option(None, "--seeds", help="Seeds per method (default: the task's, 3)."),
    epochs: int = typer.Option(None, "--epochs", help="Epoch budget (default: the task's)."),
    workers: int = typer.Option(None, "--workers", help="Worker processes (default: cores)."),
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    out: str = typer.Option(DEFAULT_OUT, "--out", help="Directory of report.md and the figures."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    data_dir: str = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    keep_checkpoints: str = typer.Option(
        None, "--keep-checkpoints", help="Save the live model of each run at these epochs "
        "(0-based): 'epochs=0,10,39', 'every=5' or 'all' (for polyak stability and the probes)."),
    checkpoint_dir: str = typer.Option("polyak-checkpoints", "--checkpoint-dir",
                                       help=CHECKPOINT_DIR_HELP),
    checkpoint_every: str = typer.Option("1", "--checkpoint-every", help=CHECKPOINT_EVERY_HELP),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    cpus_per_run: float = typer.Option(1, "--cpus-per-run", help=CPUS_HELP),
    gpus_per_run: float = typer.Option(0, "--gpus-per-run", help=GPUS_HELP),
    max_retries: int = typer.Option(3, "--max-retries", help=RETRIES_HELP),
    tuned: str = typer.Option(None, "--tuned", help="Tuned hyper-parameters to use (a file "
                              "written by `polyak tune --out`, or comma-separated files, one "
                              "per task; default: the task's shipped file)."),
    posthoc: bool = typer.Option(False, "--posthoc", help=POSTHOC_HELP),
) -> int:
    """Run the (task x method x seed) grid, resuming from the store, then print the report."""
    from polyak.bench.runner import default_methods, plan_grid, run_grid

    for name, value in (("seeds", seeds), ("epochs", epochs), ("workers", workers)):
        _positive(name, value)
    runner_ = _executor(executor, ray_address, cpus_per_run, gpus_per_run, max_retries, workers)
    task_list = _with_tuned(_tasks(tasks, _device_for(device, runner_), _data_dir(data_dir)),
                            tuned)
    specs = split_specs(methods) if methods is not None else None
    resume = _resume_policy(checkpoint_every, checkpoint_dir)
    policy = None
    if keep_checkpoints is not None:
        from polyak.bench.checkpoints import CheckpointPolicy, KeepEpochs

        policy = CheckpointPolicy(Path(checkpoint_dir).resolve(),  # absolute: for every node
                                  KeepEpochs.parse(keep_checkpoints))
    averages = None
    if posthoc:
        from polyak.bench.posthoc import PosthocPolicy

        averages = PosthocPolicy(Path(checkpoint_dir).resolve())
    jobs = plan_grid(task_list, specs, seeds, epochs, checkpoints=policy, resume=resume,
                     posthoc=averages)
    _warn_gpu_sized(task_list, epochs)
    _writable_dir(out, "--out")
    _writable_dir(checkpoint_dir, "--checkpoint-dir")
    run_store = _open_store(store)
    notes = [f"{name} not run: {why}" for name, why in default_methods()[1]] if specs is None \
        else []
    try:
        summary = run_grid(run_store, jobs, workers=workers, show_progress=progress,
                           executor=runner_)
    finally:
        if runner_ is not None:
            runner_.close()
    _report(run_store, [j.key for j in jobs], task_list, out, notes)
    typer.echo(f"{summary.executed} run(s) executed, {summary.skipped} already in {store}"
               + (f", {summary.failed} failed" if summary.failed else ""), err=True)
    if summary.interrupted:
        typer.echo("polyak: interrupted; run the same command again to finish the grid",
                   err=True)
        return 130
    return 1 if summary.failed else 0


@app.command("report")
def report_command(
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated tasks, built-in or "
                              "FILE.py:NAME (default: the built-in tasks stored)."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated specs (default: all)."),
    epochs: int = typer.Option(None, "--epochs", help="Epoch budget (default: the task's)."),
    store: str = typer.Option(DEFAULT_STORE, "--store", help="SQLite run store to read."),
    out: str = typer.Option(DEFAULT_OUT, "--out", help="Directory of report.md and the figures."),
    device: str = typer.Option("auto", "--device", help="The device the runs trained on "
                               "(auto: CUDA if available here, else cpu)."),
    data_dir: str = typer.Option(None, "--data-dir", help="The --data-dir of the bench "
                                 "(it tells which corpus a kjv-lstm run read)."),
    baseline: str = typer.Option(None, "--baseline", help="Test every method against this "
                                 "one (default: each method's own baseline, when it was run)."),
    tuned: str = typer.Option(None, "--tuned", help="The --tuned file(s) of the bench "
                              "(comma-separated: one per task, as each file names)."),
) -> int:
    """Tables, figures and paper-claim verdicts of the runs in the store.

    Without --epochs each task is reported at its own budget when the store has runs of it, else
    at the largest budget it has runs of; the other budgets are listed with the flag to pick
    them."""
    from polyak.bench.tasks import TASKS

    _positive("epochs", epochs)
    specs = split_specs(methods) if methods is not None else None
    dev, where = _device(device, check=False), _data_dir(data_dir)
    named = _tasks(tasks, dev, where) if tasks is not None else None  # checked before the store
    run_store = _open_store(store, must_exist=True)
    task_list = named if named is not None else \
        [TASKS[name].replace(device=dev, data_dir=where) for name in run_store.tasks()
         if name in TASKS]
    task_list = _with_tuned(task_list, tuned)
    others = [] if named is not None else [n for n in run_store.tasks() if n not in TASKS]
    keys, notes = _keys_by_budget(run_store, task_list, specs, epochs, store, others)
    if baseline is not None and not any(k.method == baseline for k in keys):
        fail(f"Invalid baseline: {baseline!r} has no runs in this report (methods: "
             f"{', '.join(sorted({k.method for k in keys}))})")
    _report(run_store, keys, task_list, out, notes, baseline)
    return 0


def _keys_by_budget(run_store, task_list: list, specs, epochs: int | None, store: str,
                    others: list[str] = ()):
    """(run keys, report notes): per task the asked budget, else its own or the largest stored;
    a one-line error naming the budgets in the store when nothing matches. ``others``: tasks
    of the store that are not built in (a user's: reported with ``--tasks FILE.py:NAME``)."""
    from polyak.bench.report import budgets_in_store, keys_in_store

    keys: list = []
    notes: list[str] = []
    found: dict[str, list[int]] = {}
    for task in task_list:
        budgets = found[task.name] = budgets_in_store(run_store, task.name)
        choices = [epochs] if epochs is not None else [task.epochs] + budgets
        for n_epochs in dict.fromkeys(choices):
            chosen = keys_in_store(run_store, [task], specs, n_epochs)
            if chosen:
                keys += chosen
                others = [b for b in budgets if b != n_epochs]
                if others:
                    notes.append(f"{task.name}: reported at {n_epochs} epochs; the store also "
                                 f"has runs of {', '.join(map(str, others))} epochs "
                                 f"(`polyak report --epochs N`)")
                break
    if others:
        notes.append(f"the store also has runs of {', '.join(others)} (your own task: report it "
                     "with --tasks FILE.py:NAME)")
    if not keys:
        if others and not found:
            fail(f"No runs of built-in tasks in {store}; it has runs of {', '.join(others)}: "
                 "report them with --tasks FILE.py:NAME")
        what = f"{epochs} epochs" if epochs is not None else "any budget"
        have = "; ".join(f"{t}: {', '.join(map(str, b))} epochs" for t, b in found.items() if b)
        fail(f"No finished runs of {', '.join(found) or 'any task'} at {what} with the current "
             f"settings in {store}" + (f" (the store has {have}: pass --epochs N)" if have
                                       else ""))
    return keys, notes


@app.command("tune")
def tune_command(
    task: str = typer.Option(None, "--task", help="Task to tune on: a built-in name or your "
                             "FILE.py:NAME (default mnist1d-cnn)."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated arms or recipe "
                                "names (default: every arm of the papers' protocols; the ones "
                                "they share tuning with are tuned too)."),
    out: str = typer.Option(None, "--out", help="JSON file the winners are written (merged) "
                            "into (default: polyak-tuned-<task>.json here); use it with "
                            "`polyak bench --tuned FILE`."),
    trials: int = typer.Option(None, "--trials", help="Trials per tuned method, the same for "
                               "each (default: the largest grid, so every grid runs whole)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per trial."),
    epochs: int = typer.Option(None, "--epochs", help="Epoch budget (default: the task's)."),
    workers: int = typer.Option(None, "--workers", help="Worker processes (default: cores)."),
    sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of the grid samplers."),
    store: str = typer.Option(DEFAULT_TUNE_STORE, "--store", help=STORE_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    data_dir: str = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    cpus_per_run: float = typer.Option(1, "--cpus-per-run", help=CPUS_HELP),
    gpus_per_run: float = typer.Option(0, "--gpus-per-run", help=GPUS_HELP),
    max_retries: int = typer.Option(3, "--max-retries", help=RETRIES_HELP),
    checkpoint_dir: str = typer.Option("polyak-checkpoints", "--checkpoint-dir",
                                       help="Where runs keep their resume checkpoints."),
    checkpoint_every: str = typer.Option("1", "--checkpoint-every", help=CHECKPOINT_EVERY_HELP),
) -> int:
    """Tune each method as its paper did (grid, shared values) on the validation split."""
    from polyak.bench.runner import default_methods
    from polyak.bench.tune import tune, write_tuned

    for name, value in (("seeds", seeds), ("epochs", epochs), ("workers", workers),
                        ("trials", trials)):
        _positive(name, value)
    resume = _resume_policy(checkpoint_every, checkpoint_dir)
    runner_ = _executor(executor, ray_address, cpus_per_run, gpus_per_run, max_retries, workers)
    (the_task,) = _tasks(task, _device_for(device, runner_), _data_dir(data_dir))
    specs = split_specs(methods) if methods is not None else default_methods()[0]
    n_epochs = the_task.epochs if epochs is None else epochs
    path = Path(out if out is not None else f"polyak-tuned-{the_task.name}.json")
    if path.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        fail(f"Invalid out: {path} is inside the installed package (its files are read only)")
    _writable_dir(checkpoint_dir, "--checkpoint-dir")
    run_store = _open_store(store)
    command = shlex.join(["polyak", "tune", "--task", _task_arg(the_task), "--methods",
                          ",".join(specs), "--seeds", str(seeds), "--epochs", str(n_epochs)]
                         + (["--trials", str(trials)] if trials is not None else [])
                         + (["--device", the_task.device] if the_task.device != "cpu" else []))
    try:
        result = tune(run_store, the_task, specs, n_epochs, seeds, trials, workers, sampler_seed,
                      show_progress=progress, executor=runner_, resume=resume)
    finally:
        if runner_ is not None:
            runner_.close()
    if result.interrupted:
        typer.echo("polyak: interrupted; run the same command again to finish (finished runs "
                   "are not run again)", err=True)
        return 130
    for method, values in result.tuned.items():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items()) or "published defaults"
        if method in result.shared:
            typer.echo(f"{method}: {shown}  (from {result.shared[method]})")
            continue
        if method not in result.trials:   # its paper fixed every value (PWA's lr 0.1)
            typer.echo(f"{method}: not tuned (its paper's settings)")
            continue
        n_trials = len(result.trials[method])
        if the_task.metric == "loss":
            best = min(t.val_loss for t in result.trials[method])
            typer.echo(f"{method}: {shown}  (best val loss {best:.4g} of {n_trials} trials)")
            continue
        best = max(t.val_acc for t in result.trials[method])
        typer.echo(f"{method}: {shown}  (best val acc {100 * best:.2f}% of {n_trials} trials)")
    write_tuned(path, the_task, result, n_epochs, seeds, command, trials)
    typer.echo(f"tuned hyper-parameters written to {path}; use them with "
               f"`polyak bench --tasks {_task_arg(the_task)} --tuned {path}`", err=True)
    return 0
