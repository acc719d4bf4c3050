"""The benchmark: data, models, tasks, the training loop, the run store, the runner, reports.

It uses polyak's public API like any user would; nothing below ``polyak.bench`` imports it.
"""
