"""gumbel-nas: differentiable architecture search with hard Gumbel-softmax sampling.

The data path: ``nas.config`` -> ``nas.data`` -> ``nas.supernet`` (with a search space from
``search_spaces/`` or a plugin) -> ``nas.search`` -> ``nas.genotype`` -> ``nas.network`` ->
``nas.train``; ``nas.cli`` ties the verbs together.
"""
from . import data, gumbel, ops
from .errors import InputError
from .registry import DATASETS, GENOTYPES, OPS, SCHEDULES, SEARCH_SPACES, Registry, load_object
from .schedules import TemperatureScheduler
from .genotype import Genotype, derive_cell, edge_inputs, parse_genotype
from .supernet import (MODES, ArchSample, MixedEdge, SearchCell, SearchSpace, Supernet,
                       build_supernet, get_space, node_sum, sampled_node, sampled_op)
from .network import (GenotypeCell, build_network, count_macs, count_parameters, drop_path,
                      set_drop_path)

__version__ = "0.1.0"

__all__ = [
    "ArchSample", "DATASETS", "data", "GENOTYPES", "Genotype", "GenotypeCell", "InputError", "MODES", "MixedEdge",
    "OPS", "Registry", "SCHEDULES", "SEARCH_SPACES", "SearchCell", "SearchSpace", "Supernet",
    "TemperatureScheduler", "build_network", "build_supernet", "get_space", "count_macs", "count_parameters", "derive_cell",
    "drop_path", "edge_inputs", "gumbel", "load_object", "node_sum", "ops", "parse_genotype",
    "sampled_node", "sampled_op", "set_drop_path",
]
