"""Experiments on top of the library: they run searches and compare what they find.

- ``study``: search methods x seeds on NAS-Bench-201, scored by the table, beside the no-training
  and random-search baselines (``nas study``, ``scripts/study.py``);
- ``random_search``: the random-search baseline a study runs in a process of its own;
- ``ranking``: how well a finished search's supernet ranks cells (``scripts/oneshot_ranking.py``);
- ``step_cost``: a search step's time and memory per sampling mode against its lower limit;
- ``reference``: gdas against the GDAS reference code, in turn in one process;
- ``contention``: ``nas search``'s wall time beside busy processes, per thread setting
  (the last three: ``scripts/benchmark.py``);
- ``options``: their command-line options, importable without torch.

Nothing in the rest of ``nas`` imports this package but the ``nas study`` verb.
"""
