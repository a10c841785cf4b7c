"""Shared fixtures: tiny CIFAR-format data written to a temp dir, and small configs."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The test networks are far too small for intra-op threads, and under CPU contention OpenMP's
# spin-waiting makes 2 threads many times slower than 1. The environment variable is what a run's
# default thread count honours (nas.threads), here and in the commands the tests start.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# Tests marked `cuda` exercise the GPU paths: on a CUDA device where there is one, else on the
# CPU, so that every run of the suite (CI's too) runs them. `scripts/gpu_check.py --dry-run` sets
# this variable to "cpu" to keep them on the CPU even beside a GPU.
CUDA_TESTS_DEVICE = "NAS_CUDA_TESTS_DEVICE"


def cuda_tests_device() -> torch.device:
    """Where the `cuda` tests run: the CPU when the dry run asks for it, else CUDA where there is
    a device, else the CPU."""
    if os.environ.get(CUDA_TESTS_DEVICE) == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def write_cifar10(root: Path, n_train: int = 96, n_test: int = 40, seed: int = 0,
                  batches: int = 2) -> Path:
    """Write a CIFAR-10 directory in the official python-pickle format with learnable images.

    Each class has its own mean colour, plus noise, so a tiny network can learn something.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(30, 225, size=(10, 3))

    def make(n: int) -> dict:
        labels = rng.integers(0, 10, size=n)
        img = colours[labels][:, :, None, None] + rng.normal(0, 25, size=(n, 3, 32, 32))
        data = np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)
        return {b"data": data, b"labels": labels.tolist(), b"batch_label": b"synthetic"}

    per = -(-n_train // batches)
    for i in range(batches):
        count = min(per, n_train - i * per)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(make(count), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(make(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A small CIFAR-10 directory (96 training, 40 test images)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")

TINY_SEARCH = {
    "data": {"image_size": 8, "pad": 1, "workers": 0},
    "supernet": {"C": 4, "cells": 3},
    "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2},
    "network": {"C": 4, "cells": 3, "auxiliary": True},
    "train": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "cutout": 4,
              "eval_batch_size": 20},
}


@pytest.fixture
def tiny_config(tmp_path, cifar_root) -> Path:
    """A config for a search or retraining that takes a second or two: 8x8 images, C=4, 3 cells."""
    import yaml
    cfg = {**TINY_SEARCH, "data": {**TINY_SEARCH["data"], "root": str(cifar_root)}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_genotype_cells(net: torch.nn.Module, genotype, x: torch.Tensor) -> int:
    """Run ``net`` in eval mode on ``x`` and check every ``GenotypeCell`` against the genotype:
    it holds the cell of its kind, each op is the module its name builds (stride 2 from the
    inputs of a reduction cell), and its output is recomputed from its inputs by the genotype's
    edges (node = sum of op(state) over its edges; output = the concat states, or the last
    node). Returns how many cells were checked."""
    import nas
    seen = []
    cells = [m for m in net.modules() if isinstance(m, nas.GenotypeCell)]
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append((m, i[0], o))) for c in cells]
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(cells) > 0
    for cell, inputs, out in seen:
        kinds = [k for k, nodes in genotype.cells.items() if nodes == cell.nodes]
        assert kinds, f"a cell holds nodes of no cell kind: {cell.nodes}"
        nodes = genotype.cells[kinds[0]]
        states, k = list(inputs), 0
        for node in nodes:
            total = 0
            for op_name, src in node:
                op = cell.ops[k]
                stride = 2 if cell.reduction and src < cell.num_inputs else 1
                C = inputs[0].shape[1]
                expected = nas.ops.build_op(op_name, C, stride)
                assert type(op) is type(expected), (op_name, type(op))
                assert [p.shape for p in op.parameters()] == [p.shape for p in expected.parameters()]
                total = total + op(states[src])
                k += 1
            states.append(total)
        concat = cell.concat
        ref = torch.cat([states[i] for i in concat], 1) if concat else states[-1]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    return len(seen)
