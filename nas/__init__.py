"""gumbel-nas: differentiable architecture search with hard Gumbel-softmax sampling.

The data path: ``nas.config`` -> ``nas.data`` -> ``nas.supernet`` (with a search space from
``search_spaces/`` or a plugin, built through ``nas.spaces``) -> ``nas.search`` -> ``nas.genotype`` -> ``nas.network`` ->
``nas.train``; ``nas.cli`` ties the verbs together.

The names below load on first use, so that ``nas`` (the command) starts without importing
torch and Ctrl-C in its first second ends it with one line.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "data": "data", "gumbel": "gumbel", "ops": "ops",
    "InputError": "errors", "check_positive": "errors",
    "DATASETS": "registry", "GENOTYPES": "registry", "OPS": "registry", "SCHEDULES": "registry", "SEARCH_SPACES": "registry",
    "Registry": "registry", "load_object": "registry",
    "TemperatureScheduler": "schedules",
    "Genotype": "genotype", "derive_cell": "genotype", "edge_inputs": "genotype",
    "parse_genotype": "genotype",
    "MODES": "supernet", "ArchSample": "supernet", "MixedEdge": "supernet",
    "SearchCell": "supernet", "Supernet": "supernet", "sampled_node": "supernet",
    "sampled_op": "supernet", "node_sum": "ops",
    "SearchSpace": "spaces", "build_supernet": "spaces", "build_network": "spaces",
    "get_space": "spaces",
    "GenotypeCell": "network", "count_macs": "cost",
    "count_parameters": "network", "drop_path": "network", "set_drop_path": "network",
    "load": "trained", "Trained": "trained",
    "ChainLayer": "network", "ResidualBranch": "network", "ChoicePoint": "choices",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name.isidentifier() and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # a submodule: nas.config
        raise AttributeError(f"module 'nas' has no attribute '{name}'")
    if module == "registry":  # the built-in ops, schedules and datasets register on import
        for builtin in ("ops", "schedules", "data"):
            importlib.import_module(f".{builtin}", __name__)
    value = importlib.import_module(f".{module}", __name__)
    value = value if module == name else getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
