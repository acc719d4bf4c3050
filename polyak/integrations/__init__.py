"""Integrations with training frameworks (optional extras).

- :mod:`polyak.integrations.lightning`: ``PolyakCallback`` for ``lightning.Trainer``
  (``pip install "polyak[lightning]"``);
- :mod:`polyak.integrations.hf`: ``PolyakTrainer`` for ``transformers.Trainer``
  (``pip install "polyak[hf]"``).

Nothing is imported here: each submodule imports its framework when it is imported.
"""
