"""`nas profile`: parameters, multiply-adds, latency and memory of a network, total and per cell."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import nas
from nas.cli import main
from nas.cost import count_cost
from nas.profiling import LiveTensors, blocks_of, profile_network, record_calls
from conftest import DARTS_V2

TINY = ["--set", "network.C=4", "network.cells=3", "--image-size", "8", "--runs", "3"]


def test_live_tensors_peak_is_the_largest_set_of_activations_alive_at_once():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    meter = LiveTensors([*net.parameters(), x])
    with torch.no_grad(), meter:
        y = net(x)
    wide = 2 * 16 * 8 * 8 * 4  # float32 bytes of a 16-channel activation
    assert meter.peak == 2 * wide  # the conv's output and the ReLU's, alive together
    assert meter.live == y.numel() * 4  # the output alone is still held
    del y
    assert meter.live == 0


def test_live_tensors_counts_a_view_or_an_in_place_op_once():
    x = torch.randn(4, 8)
    meter = LiveTensors([x])
    with torch.no_grad(), meter:
        y = x * 2
        z = y[1:].relu_()  # a view of y, changed in place: no new storage
        w = z.t()
    assert meter.peak == meter.live == 4 * 8 * 4
    del y, z, w


def test_per_block_peaks_are_measured_from_where_each_block_starts():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                        nn.Sequential(nn.ReLU(), nn.Conv2d(16, 4, 1)))
    x = torch.randn(1, 3, 4, 4)
    meter = LiveTensors([*net.parameters(), x])
    with torch.no_grad():
        calls, peaks = record_calls(net, blocks_of(net), x, meter)
    wide, narrow = 16 * 16 * 4, 4 * 16 * 4
    assert list(calls) == ["0", "1"]
    assert peaks == {"0": wide, "1": wide + narrow}  # ReLU output, then it and the conv's output
    assert meter.peak == 2 * wide + narrow  # block 1's input stays alive while it runs


def test_profile_of_a_darts_network_adds_up_to_the_exact_counts():
    genotype = nas.parse_genotype(DARTS_V2)
    net = nas.build_network("darts", genotype, 10, {"C": 4, "cells": 3, "auxiliary": True})
    p = profile_network(net, 8, "cpu", batch=4, runs=3, genotype=genotype)
    exact = count_cost(net, 8)
    assert (p["params"], p["macs"]) == (exact["params"], exact["macs"])
    assert p["params_left_out"] == sum(v.numel() for v in net.auxiliary_head.parameters())
    names = [b["name"] for b in p["blocks"]]
    assert names == ["stem", "cells.0", "cells.1", "cells.2", "classifier"]  # aux head not run
    assert [b["kind"] for b in p["blocks"]] == ["Sequential", "normal cell", "reduce cell",
                                                "reduce cell", "Linear"]
    assert sum(b["params"] for b in p["blocks"]) == p["params"] and p["rest"]["params"] == 0
    assert sum(b["macs"] for b in p["blocks"]) == p["macs"] and p["rest"]["macs"] == 0
    assert p["batch_sizes"] == [1, 4] and p["threads"] == torch.get_num_threads()
    for b in ("1", "4"):
        assert p["latency_ms"][b] > 0 and 3 <= p["runs"][b] <= 3
        assert all(row["latency_ms"][b] > 0 for row in p["blocks"])
        assert 0 < max(r["activation_peak_bytes"][b] for r in p["blocks"]) <= \
            p["memory"]["activation_peak_bytes"][b]
    # four images hold four times the activations of one (the same ops, the same order)
    peak = p["memory"]["activation_peak_bytes"]
    assert peak["4"] == 4 * peak["1"]
    assert p["memory"]["weights_bytes"] == 4 * sum(
        t.numel() for t in [*net.parameters(), *net.buffers()] if t.dtype == torch.float32) + \
        8 * sum(t.numel() for t in net.buffers() if t.dtype == torch.int64)


def test_cli_profile_of_darts_v2_prints_the_published_counts(capsys):
    assert main(["profile", "DARTS_V2", "--batch", "1", "--runs", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 3,349,342 (auxiliary head left out" in out
    assert "multiply-adds: 528.4M per 32x32 image" in out
    assert "latency on cpu, 1 thread" in out and "median of 3 runs after 3 warm-up" in out
    assert out.count("normal cell") == 18 and out.count("reduce cell") == 2


def test_cli_profile_json_of_a_genotype_and_of_a_run(tmp_path, tiny_config, capsys):
    assert main(["profile", DARTS_V2, "--json", "--batch", "2", *TINY]) == 0
    p = json.loads(capsys.readouterr().out)
    net = nas.build_network("darts", nas.parse_genotype(DARTS_V2), 10, {"C": 4, "cells": 3})
    assert (p["params"], p["macs"]) == tuple(count_cost(net, 8).values())
    assert p["space"] == "darts" and p["network"] == {"C": 4, "cells": 3}
    assert p["batch_sizes"] == [1, 2] and p["image_size"] == 8
    # a trained run: its saved config builds the network, its result names the same counts
    run = tmp_path / "run"
    assert main(["train", "--genotype", DARTS_V2, "--config", str(tiny_config), "--run-dir",
                 str(run), "--quiet"]) == 0
    assert "profile (parameters, multiply-adds" in capsys.readouterr().out
    assert main(["profile", str(run), "--json", "--batch", "1", "--runs", "3"]) == 0
    p = json.loads(capsys.readouterr().out)
    result = json.loads((run / "result.json").read_text())
    assert (p["params"], p["macs"]) == (result["params"], result["macs"])
    saved = json.loads((run / "profile.json").read_text())
    for key in ("params", "macs", "genotype", "network"):
        assert saved[key] == p[key], key


@pytest.mark.parametrize("args, message", [
    (["not_a_genotype"], "is neither a genotype file"),
    (["DARTS_V2", "--batch", "0"], "--batch must be from 1 to 8192"),
    (["DARTS_V2", "--runs", "0"], "--runs must be from 1 to 10000"),
    (["DARTS_V2", "--image-size", "0"], "--image-size must be from 1 to 1024"),
    (["DARTS_V2", "--set", "network.C=4", "network.cells=3", "--image-size", "1"], "forward failed"),
    (["DARTS_V2", "--set", "space=nasbench201"], "the genotype belongs to the darts space"),
])
def test_cli_profile_bad_input_fails_with_one_line(args, message, capsys):
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
