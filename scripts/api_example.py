"""A whole search and retraining from Python: a config built from a dict, nas.search.search,
then nas.train.train on the genotype found. What `nas run` does, as a script.

    python scripts/api_example.py --data-dir ../shared/data [--out runs/api-example]

It is tiny (NAS-Bench-201 space, 16x16 images, 2 search and 2 training epochs of 10 steps):
16 s with one thread on a 2-core CPU that other jobs kept busy (load 7). Change the dict to
change the run; every key is in the configuration reference, docs/reference/config.md.
"""
from __future__ import annotations

import nas
from nas.config import build_config
from nas.errors import OneLineParser
from nas.search import search
from nas.train import train


def main() -> None:
    """Search, retrain, print the test accuracy."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/api-example")
    args = parser.parse_args()
    cfg = build_config({
        "space": "nasbench201",
        "data": {"root": args.data_dir, "image_size": 16, "pad": 2, "limit": 1000,
                 "test_limit": 500, "workers": 0},
        "supernet": {"C": 8, "cells_per_stage": 1},
        "search": {"epochs": 2, "batch_size": 32, "steps_per_epoch": 10, "arch_lr": 3e-3},
        "network": {"C": 8, "cells_per_stage": 1},
        "train": {"epochs": 2, "batch_size": 32, "steps_per_epoch": 10, "cutout": 0,
                  "auxiliary_weight": 0.0, "drop_path": 0.0},
    })
    found = search(cfg, f"{args.out}/search", force=True)  # force: replace an earlier run there
    print("genotype:", found.genotype)
    # the genotype is a plain value: save it, or build the network yourself
    net = nas.build_network(found.genotype.space, found.genotype, 10, cfg.network)
    print(f"network: {nas.count_parameters(net):,} parameters")
    result = train(cfg, found.genotype, f"{args.out}/train", force=True)
    print(f"test accuracy: {result.test_acc:.2f}% ({result.run_dir / 'result.json'})")


if __name__ == "__main__":
    main()
