"""From a finished retraining back to a PyTorch module: ``nas.load(RUN_OR_CHECKPOINT)``.

A ``nas train`` checkpoint holds the network's weights under ``"model"`` (its ``state_dict()``),
with the config, the genotype, the space and the number of classes that rebuild the network.
It is read with ``torch.load(..., weights_only=True)`` (tensors and plain values: a downloaded
checkpoint never runs code), and every entry is checked before use, so a damaged or foreign
file fails with one line. A search run holds a genotype, not trained weights: it is refused
with the command that retrains it.

The module is ``nas.trained``, not ``nas.load``: importing a submodule ``nas.load`` would
replace the function ``nas.load`` on the package.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .config import Config, build_config
from .errors import InputError
from .genotype import Genotype
from .runtime import CHECKPOINT, first_mismatch, load_checkpoint
from .spaces import build_network

# what a train checkpoint must hold to rebuild its network, and the type of each entry
NEEDED = {"model": dict, "config": dict, "genotype": dict, "space": str, "num_classes": int}


@dataclass
class Trained:
    """A retrained network read from its checkpoint, with what it was built from."""

    model: nn.Module
    space: str
    genotype: Genotype
    num_classes: int
    image_size: int
    epoch: int
    checkpoint: Path
    config: Config


def search_run_message(path: Path) -> str:
    """The line that refuses a search run where a trained network is needed."""
    return (f"{path} is a search run: it holds a genotype, not a trained network; retrain it "
            f"first (nas train --genotype {path} --config FILE) and use that run")


def checkpoint_path(source: str | Path) -> Path:
    """The ``nas train`` checkpoint that ``source`` names: the file, a train run, a `nas run`."""
    path = Path(source)
    if path.is_dir():
        if not (path / CHECKPOINT).is_file() and (path / "train" / CHECKPOINT).is_file():
            path = path / "train"  # a `nas run` directory: its retraining
        elif not (path / CHECKPOINT).is_file() and (path / "search").is_dir():
            raise InputError(f"{path} is a nas run directory without a trained network "
                             f"({path / 'train' / CHECKPOINT} does not exist); finish it first: "
                             f"nas run --resume {path}")
        elif not (path / CHECKPOINT).is_file() and (path / "genotype.json").is_file():
            raise InputError(search_run_message(path))
        path = path / CHECKPOINT
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path} (pass a nas train run directory or its "
                         "checkpoint.pt)")
    return path


def _other_version(path: Path, state: dict[str, Any], problem: str) -> InputError:
    from . import __version__
    if state.get("version") == __version__:
        return InputError(f"{path} is not a complete nas train checkpoint: {problem}")
    by = f"gumbel-nas {state['version']}" if "version" in state else \
        "a version of gumbel-nas that did not record its version"
    return InputError(f"{path} does not fit this version of gumbel-nas ({__version__}); it was "
                      f"written by {by}: {problem}")


def _check_entries(path: Path, state: dict[str, Any]) -> None:
    """Every entry ``NEEDED`` is there with its type (one line naming the first that is not)."""
    missing = [k for k in NEEDED if k not in state]
    if missing:
        raise _other_version(path, state, f"it has no {', '.join(missing)}")
    for key, kind in NEEDED.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _other_version(path, state, f"its '{key}' is of type {type(value).__name__}, "
                                              f"not {kind.__name__}")


def load_trained(source: str | Path) -> Trained:
    """The retrained network of a ``nas train`` run or checkpoint, with its trained weights."""
    path = checkpoint_path(source)
    state = load_checkpoint(path)
    if state["kind"] == "search":
        raise InputError(search_run_message(path.parent if path.name == CHECKPOINT else path))
    if state["kind"] != "train":
        raise InputError(f"{path} is a {state['kind']} checkpoint, not a nas train checkpoint")
    _check_entries(path, state)
    try:
        cfg = build_config(state["config"])
        genotype = Genotype.from_dict(state["genotype"])
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise _other_version(path, state, f"its config or genotype does not read ({exc})") from None
    model = build_network(state["space"], genotype, state["num_classes"], cfg.network)
    problem = first_mismatch(model, state["model"])
    if problem:
        raise _other_version(path, state, f"{problem}")
    model.load_state_dict(state["model"])
    return Trained(model, state["space"], genotype, state["num_classes"], cfg.data.image_size,
                   int(state.get("epoch", 0)), path, cfg)


def load(source: str | Path) -> Trained:
    """The trained network of a ``nas train`` run directory (or its ``checkpoint.pt``, or a
    ``nas run`` directory) in eval mode, with its genotype, config and space.

    ``model`` is the network ``nas train`` built, on the CPU, its weights those of the
    checkpoint's last epoch; it returns what the space's network returns (for ``darts``:
    ``(logits, auxiliary logits or None)``, the auxiliary logits only in training). A search run
    raises ``nas.InputError`` saying how to retrain it, as does a missing, damaged or foreign file.
    """
    trained = load_trained(source)
    trained.model.eval()
    return trained
