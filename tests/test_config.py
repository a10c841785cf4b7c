"""Config files: defaults, validation with paths and closest keys, --set overrides, shipped files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import nas
from nas.config import Config, build_config, load_config, save_config, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_published_hyperparameters():
    cfg = Config()
    s, t = cfg.search, cfg.train
    assert (s.mode, s.lr, s.lr_min, s.momentum, s.grad_clip) == ("gdas", 0.025, 0.001, 0.9, 5.0)
    assert (s.arch_lr, s.arch_betas, s.arch_weight_decay) == (3e-4, [0.5, 0.999], 1e-3)
    assert (s.tau.schedule, s.tau.max, s.tau.min) == ("linear", 10.0, 0.1)
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.auxiliary_weight, t.drop_path,
            t.cutout) == (600, 96, 0.025, 3e-4, 0.4, 0.2, 16)
    assert cfg.data.split == 0.5


def test_yaml_file_over_defaults_and_set_overrides(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("search:\n  epochs: 7\n  arch_lr: 3e-4\n  tau: {max: 5}\nsupernet: {C: 8}\n")
    cfg = load_config(path, ["search.epochs=50", "supernet.cells=5", "search.tau.per=iteration",
                             "search.arch_betas=[0.9, 0.99]", "data.on_device=true"])
    assert cfg.name == "my"  # from the file name
    assert cfg.search.epochs == 50 and cfg.search.tau.max == 5.0 and cfg.search.tau.min == 0.1
    assert cfg.search.arch_lr == 3e-4  # PyYAML reads 3e-4 as a string; it is taken as a number
    assert cfg.supernet == {"C": 8, "cells": 5}
    assert cfg.search.tau.per == "iteration" and cfg.search.arch_betas == [0.9, 0.99]
    assert cfg.data.on_device is True


@pytest.mark.parametrize("data, message", [
    ({"search": {"arch_lr": "abc"}}, "search.arch_lr: expected a number, got 'abc'"),
    ({"serach": {}}, "serach: unknown key; did you mean 'search'?"),
    ({"search": {"epochz": 3}}, "search.epochz: unknown key; did you mean 'epochs'?"),
    ({"search": {"tau": {"mni": 1}}}, "search.tau.mni: unknown key; did you mean 'min'?"),
    ({"search": {"mode": "gdass"}}, "search.mode: expected one of gdas, st, gumbel, softmax, "
                                    "got 'gdass'; did you mean 'gdas'?"),
    ({"search": {"epochs": 2.5}}, "search.epochs: expected an integer, got 2.5"),
    ({"search": {"nesterov": "yes please"}}, "search.nesterov: expected true or false"),
    ({"search": {"channels_last": "yes"}}, "search.channels_last: expected one of true, false, "
                                           "auto, got 'yes'"),
    ({"train": {"channels_last": 1}}, "train.channels_last: expected one of true, false, auto, got 1"),
    ({"search": 5}, "search: expected a mapping"),
    ({"data": {"split": 1.5}}, "data.split: must be in (0, 1), got 1.5"),
    ({"search": {"arch_betas": [0.5]}}, "search.arch_betas: expected two numbers"),
    ({"search": {"tau": {"min": 0}}}, "search.tau.min: must be positive"),
    ({"search": {"epochs": 0}}, "search.epochs: must be at least 1"),
    ({"train": {"drop_path": 1.0}}, "train.drop_path: must be in [0, 1)"),
])
def test_bad_values_fail_with_their_path(data, message):
    with pytest.raises(nas.InputError) as info:
        build_config(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("search.epochs", "expected key=value"),
    ("=3", "expected key=value"),
    ("search..epochs=3", "expected key=value"),
    ("search.arch_lr=abc", "search.arch_lr: expected a number, got 'abc'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(nas.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({}, [override])


def test_unreadable_files(tmp_path):
    with pytest.raises(nas.InputError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(nas.InputError, match="not valid YAML at line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(nas.InputError, match="expected a mapping"):
        load_config(listy)


def test_saved_config_reads_back_identically(tmp_path):
    cfg = build_config({"supernet": {"C": 8}}, ["search.epochs=3", "search.tau.options={every: 2}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert to_dict(again) == to_dict(cfg)


def test_builder_options_are_checked_against_the_space():
    with pytest.raises(nas.InputError, match=r"supernet.cell: unknown key; did you mean 'cells'\?"):
        nas.build_supernet("darts", 10, "gdas", 0, {"cell": 3})
    with pytest.raises(nas.InputError, match="supernet.C: expected an integer, got 'x'"):
        nas.build_supernet("darts", 10, "gdas", 0, {"C": "x"})
    with pytest.raises(nas.InputError, match=r"network.cells: unknown key; did you mean "
                                             r"'cells_per_stage'\?"):
        nas.build_network("nasbench201", nas.parse_genotype(
            "|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|"), 10,
            {"cells": 3})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_fit_their_space(path):
    from nas.config import check_options
    cfg = load_config(path)
    space = nas.get_space(cfg.space)
    check_options(space.supernet, cfg.supernet, "supernet", skip=("num_classes", "mode", "seed"))
    check_options(space.network, cfg.network, "network", skip=("genotype", "num_classes"))
    assert cfg.name == path.stem


def test_gdas_config_is_the_papers_setting():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "gdas_darts_cifar10.yaml")
    s = cfg.search
    assert (s.mode, s.epochs, s.batch_size, s.nesterov, s.weight_decay) == ("gdas", 250, 256, True, 5e-4)
    assert (s.tau.schedule, s.tau.max, s.tau.min) == ("linear", 10.0, 0.1)
    assert cfg.supernet == {"C": 16, "cells": 6}


def test_channels_last_auto_is_on_for_a_cpu_only():
    from nas.runtime import channels_last

    cfg = build_config({})
    assert cfg.search.channels_last == cfg.train.channels_last == "auto"
    assert channels_last("auto", torch.device("cpu")) is True
    assert channels_last("auto", torch.device("cuda")) is False  # a device object needs no GPU
    assert channels_last(False, torch.device("cpu")) is False
    assert channels_last(True, torch.device("cuda")) is True
    assert build_config({"search": {"channels_last": False}}).search.channels_last is False


def test_in_layout_converts_image_batches_only():
    from nas.runtime import in_layout

    images = torch.randn(2, 3, 4, 5)
    converted = in_layout(images, True)
    assert torch.equal(converted, images) and not converted.is_contiguous()
    assert converted.is_contiguous(memory_format=torch.channels_last)
    assert in_layout(images, False) is images
    signals = torch.randn(2, 3, 7)  # a plugin dataset's non-image inputs stay as they are
    assert in_layout(signals, True) is signals
