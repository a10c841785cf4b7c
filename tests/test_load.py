"""`nas.load`: a retraining run back as a PyTorch module, in eval mode, with its genotype and config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nas
import nas.export  # imports nas.trained: nas.load must stay the function
from nas.cli import main
from nas.data import Batches, load_split
from nas.runtime import channels_last
from nas.train import evaluate_model
from conftest import DARTS_V2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cifar_root) -> Path:
    """A tiny DARTS network retrained by `nas train` (8x8 images, C=4, 3 cells, auxiliary head)."""
    import yaml
    root = tmp_path_factory.mktemp("load")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(cifar_root), "image_size": 8, "pad": 1, "workers": 0},
        "network": {"C": 4, "cells": 3, "auxiliary": True},
        "train": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "cutout": 4,
                  "drop_path": 0.2, "eval_batch_size": 20}}))
    run = root / "train"
    assert main(["train", "--genotype", DARTS_V2, "--config", str(config), "--run-dir", str(run),
                 "--quiet"]) == 0
    return run


def test_load_gives_the_trained_network_in_eval_mode(trained_run, cifar_root):
    loaded = nas.load(trained_run)
    assert nas.load is nas.trained.load and isinstance(loaded, nas.Trained)
    assert not any(m.training for m in loaded.model.modules())
    assert loaded.checkpoint == trained_run / "checkpoint.pt" and loaded.epoch == 2
    assert (loaded.space, loaded.num_classes, loaded.image_size) == ("darts", 10, 8)
    assert loaded.genotype == nas.parse_genotype(DARTS_V2)
    assert loaded.genotype == nas.Genotype.load(trained_run / "genotype.json")
    assert loaded.config.network == {"C": 4, "cells": 3, "auxiliary": True}
    assert loaded.config.train.epochs == 2
    # its logits are those of the network built from the checkpoint's own state
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    ref = nas.build_network("darts", loaded.genotype, 10, state["config"]["network"])
    ref.load_state_dict(state["model"])
    ref.eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, aux = loaded.model(x)
        untrained = nas.build_network("darts", loaded.genotype, 10, state["config"]["network"])
        assert torch.equal(logits, ref(x)[0]) and aux is None
        assert not torch.allclose(logits, untrained.eval()(x)[0])
    # and they score on the test images what the run recorded
    cfg = loaded.config
    batches = Batches(load_split(cfg.data, False), 20, train=False, device=torch.device("cpu"),
                      on_device=cfg.data.on_device, workers=0)
    # in the layout the run evaluated in (channels-last on a CPU): another layout runs other
    # convolution kernels, whose rounding could flip a near tie of this barely trained network
    layout = channels_last(cfg.train.channels_last, torch.device("cpu"))
    model = loaded.model.to(memory_format=torch.channels_last if layout else torch.preserve_format)
    _, acc = evaluate_model(model, batches, channels_last=layout)
    assert acc == pytest.approx(json.loads((trained_run / "result.json").read_text())["test_acc"])


def test_load_reads_the_checkpoint_file_and_a_nas_run_directory(trained_run, tmp_path):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = nas.load(trained_run).model(x)[0]
        assert torch.equal(nas.load(trained_run / "checkpoint.pt").model(x)[0], want)
        (tmp_path / "run" / "search").mkdir(parents=True)
        (tmp_path / "run" / "train").symlink_to(trained_run, target_is_directory=True)
        assert torch.equal(nas.load(str(tmp_path / "run")).model(x)[0], want)


def test_load_refuses_what_is_not_a_trained_network(trained_run, tmp_path):
    with pytest.raises(nas.InputError, match="checkpoint not found"):
        nas.load(tmp_path / "nothing")
    search = tmp_path / "search"
    search.mkdir()
    nas.parse_genotype(DARTS_V2).save(search / "genotype.json")
    with pytest.raises(nas.InputError, match=f"{search} is a search run.*nas train --genotype"):
        nas.load(search)
    torch.save({"kind": "search", "epoch": 1}, search / "checkpoint.pt")
    with pytest.raises(nas.InputError, match="is a search run"):
        nas.load(search / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(nas.InputError, match="not a readable checkpoint"):
        nas.load(tmp_path / "junk.pt")
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    bad = {"num_classes": "10", "model": [1, 2], "space": 3, "config": None}
    for key, value in bad.items():
        torch.save({**state, key: value}, tmp_path / "bad.pt")
        with pytest.raises(nas.InputError, match=f"its '?{key}'? is") as exc:
            nas.load(tmp_path / "bad.pt")
        assert "\n" not in str(exc.value)
    torch.save({k: v for k, v in state.items() if k != "model"}, tmp_path / "bad.pt")
    with pytest.raises(nas.InputError, match="it has no model"):
        nas.load(tmp_path / "bad.pt")
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("classifier")}
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(nas.InputError, match="complete nas train checkpoint: the checkpoint has no tensor 'classifier"):
        nas.load(tmp_path / "bad.pt")
