"""Distributed runs on 2 CPU processes (gloo): torchrun end to end, shared samples, equivalence
with one process, resume with another number of processes, errors. Every run has a timeout."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

import nas
import nas.config
import nas.distributed
import nas.search
import nas.train
from nas.cli import main
from nas.data import Batches

from conftest import DARTS_V2, ROOT

SPACE = f"{Path(__file__).with_name('ddp_space.py')}:SPACE"
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(out: Path, stop_at_epoch: int | None = None, patch=setattr, late: float = 0.0) -> None:
    """Make this process save every sample it draws and the logits after every epoch to ``out``
    (and, with ``stop_at_epoch``, the time it stopped: ``late`` seconds after it got there)."""
    seen = {"indices": [], "logits": []}
    real_sample, real_check = nas.Supernet.sample, nas.distributed.check_same

    def sample(self):
        drawn = real_sample(self)
        # a forward's sample: not the check before the run, which draws nothing, nor a step's
        # samples drawn ahead (Supernet.drawing_ahead returns nothing; the forwards take them)
        if self.training and drawn:
            seen["indices"].append({k: v.tolist() for k, v in self.last_index.items()})
        return drawn

    def check_same(tensors, what):
        tensors = list(tensors)
        seen["logits"].append([t.detach().clone() for t in tensors])
        torch.save(seen, out)
        real_check(tensors, what)

    patch(nas.Supernet, "sample", sample)
    patch(nas.distributed, "check_same", check_same)
    if stop_at_epoch is not None:  # Ctrl-C on every rank once that epoch's checkpoint is written
        real_set_epoch = nas.data.Batches.set_epoch

        def set_epoch(self, epoch):
            if epoch == stop_at_epoch:
                time.sleep(late)
                out.with_suffix(".stopped").write_text(repr(time.time()))
                raise KeyboardInterrupt
            real_set_epoch(self, epoch)

        patch(nas.data.Batches, "set_epoch", set_epoch)


def _worker(rank: int, world: int, port: int, argv: list[str], out: str, stop: int | None,
            fail_rank: int | None, fail_in: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NAS_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    # rank 0 stops a little later, as it does when it writes the checkpoint on a busy machine
    record(Path(out) / f"rank{rank}.pt", stop, late=1.5 if rank == 0 else 0.0)
    real_destroy = torch.distributed.destroy_process_group

    def destroy(*args, **kwargs):
        (Path(out) / f"rank{rank}.left").write_text(repr(time.time()))
        real_destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = destroy
    if rank == fail_rank and fail_in == "setup":  # a data directory missing on one machine
        argv = [*argv, "--data-dir", str(Path(out) / "missing")]
    elif rank == fail_rank:  # out of memory in the second epoch
        real_set_epoch = nas.data.Batches.set_epoch

        def set_epoch(self, epoch):
            if epoch == 1:
                raise MemoryError("out of memory (simulated)")
            real_set_epoch(self, epoch)

        nas.data.Batches.set_epoch = set_epoch
    code = main(argv)
    (Path(out) / f"rank{rank}.code").write_text(str(code))


def spawn(argv: list[str], out: Path, stop: int | None = None, fail_rank: int | None = None,
          fail_in: str = "setup", world: int = 2) -> list[int]:
    """Run ``nas.cli.main(argv)`` on ``world`` spawned processes; their exit codes."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_worker, (world, free_port(), argv, str(out), stop, fail_rank,
                                       fail_in),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.time() + TIMEOUT
    try:
        while not ctx.join(timeout=max(deadline - time.time(), 0.1)):
            if time.time() > deadline:
                pytest.fail(f"the {world} processes did not finish in {TIMEOUT} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [int((out / f"rank{r}.code").read_text()) for r in range(world)]


@pytest.fixture
def flat_config(tmp_path, cifar_root) -> Path:
    """3 epochs of 2 steps of batch 16 on 8x8 images, in the space without batch norm."""
    cfg = {"space": SPACE, "data": {"root": str(cifar_root), "image_size": 8, "pad": 1,
                                    "workers": 0},
           "supernet": {"C": 4, "cells": 2},
           "search": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 2, "arch_lr": 0.01}}
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("budget", [[], ["--set", "search.budget.params=5000",
                                         "search.budget.latency_ms=1000"]], ids=["plain", "budget"])
def test_torchrun_search_writes_one_run_directory(tmp_path, tiny_config, budget):
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nas", "search", "--config", str(tiny_config), "--device", "cpu",
           "--run-dir", "run", *budget]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # no second directory, no stray files
    assert out.stdout.count("genotype file:") == 1  # rank 0 alone prints
    assert "batch 16 = 2 processes x 8 (gloo)" in out.stdout
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert len(list((work / "run").glob("events.out.tfevents.*"))) == 1
    state = torch.load(work / "run" / "checkpoint.pt", weights_only=True)
    # every step drew 2 samples (weights, architecture) per cell kind, on each rank alike
    assert state["epoch"] == 2 and state["model"]["_extra_state"]["samples_drawn"] == 2 * 2 * 2 * 2
    if budget:  # the ranks' logits stayed equal (checked every epoch) under one averaged table
        assert "budget: params <= 5,000 parameters, latency_ms <= 1000.000 ms" in out.stdout
        assert "cost of the network:" in out.stdout and set(state["budget"]["multipliers"]) == \
            {"params", "latency_ms"}


def test_ranks_share_every_sample_equal_one_process_and_resume_on_one(tmp_path, flat_config,
                                                                     monkeypatch):
    args = ["search", "--config", str(flat_config), "--device", "cpu", "--quiet"]
    two = tmp_path / "two"  # 2 processes x batch 8, stopped (Ctrl-C) after epoch 2 of 3
    assert spawn([*args, "--run-dir", str(two)], tmp_path / "rec2", stop=2) == [130, 130]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.yaml", "rec2", "two"]
    # no rank left the group before the other had stopped too (else its sockets closing under
    # the other can abort it); rank 0 stopped 1.5 s late, well inside the wait for peers
    stopped, left = ({r: float((tmp_path / "rec2" / f"rank{r}.{what}").read_text()) for r in (0, 1)}
                     for what in ("stopped", "left"))
    assert left[1] >= stopped[0] and left[0] >= stopped[1]
    assert torch.load(two / "checkpoint.pt", weights_only=True)["epoch"] == 2
    r0, r1 = (torch.load(tmp_path / "rec2" / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["indices"]) == 2 * 2 * 2  # epochs x steps x (weight, architecture) forwards
    assert r0["indices"] == r1["indices"]  # one sample per step for every rank
    assert len({str(i) for i in r0["indices"]}) > 1  # and they do change
    for a, b in zip(r0["logits"], r1["logits"]):  # bit for bit, after every epoch
        assert all(torch.equal(x, y) for x, y in zip(a, b))

    # 1 process x batch 16 on the same data: the same samples, the same logits up to rounding
    # (the gradient is a mean over 2 x 8 images instead of 16; no batch norm in this space)
    one = tmp_path / "rec1"
    one.mkdir()
    record(one / "rank0.pt", patch=monkeypatch.setattr)
    assert main([*args, "--run-dir", str(tmp_path / "one")]) == 0
    r = torch.load(one / "rank0.pt")
    assert r["indices"][:8] == r0["indices"]  # exact: a draw flips only on a near tie (< 1e-6)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])
    for a, b in zip(r["logits"], r0["logits"]):
        # float32 rounding of the sums (a mean of 2 means of 8 against a mean of 16), through
        # 4 Adam steps of lr 0.01: measured up to 8e-8
        assert (flat(a) - flat(b)).abs().max() < 1e-6
    assert (flat(r["logits"][-1]) - flat(r["logits"][0])).abs().max() > 1e-3  # they did move

    # the 2-process run resumed on 1 process: the same global batches in the same order and
    # the same samples (the counter is saved), so rounding apart it ends as the 1-process run
    assert main(["search", "--resume", str(two), "--device", "cpu", "--quiet",
                 "--plugin", SPACE]) == 0  # the saved config names a plugin file: trusted here
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"]
            for d in (tmp_path / "one", two))
    assert a["_extra_state"] == b["_extra_state"]
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a if k.startswith("arch_logits"))
    # exact: the argmax of logits 1e-6 apart changes only on a near tie, far from these logits
    assert (tmp_path / "one" / "genotype.json").read_text() == (two / "genotype.json").read_text()
    epochs = [l.split(",")[0] for l in (two / "metrics.jsonl").read_text().splitlines()]
    assert epochs == ['{"epoch": 1', '{"epoch": 2', '{"epoch": 3']


@pytest.mark.parametrize("fail_in", ["setup", "epoch 2"])
def test_a_rank_that_fails_stops_every_rank_with_one_line(tmp_path, flat_config, capfd, fail_in):
    run = tmp_path / "run"
    argv = ["search", "--config", str(flat_config), "--device", "cpu", "--run-dir", str(run)]
    codes = spawn([*argv, "--quiet"], tmp_path / "rec", fail_rank=1, fail_in=fail_in)
    err = capfd.readouterr().err.strip().splitlines()
    if fail_in == "setup":  # found before anything started: one line, from rank 0, nothing made
        assert codes == [2, 2] and not run.exists()
        assert len(err) == 1 and err[0].startswith("nas search: error: rank 1: CIFAR-10 not found")
    else:  # one line from the failing rank, one from its peer that lost it; no hang
        assert codes == [1, 1], err
        assert "nas search: error (rank 1): MemoryError: out of memory (simulated)" in err
        assert len(err) == 2 and any(l.startswith("nas search: error (rank 0): ") for l in err)
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1  # resumable


def _logged_cifar10(root, train, download=False):
    """CIFAR-10 from ``root``, logging who asked for it, when, and whether to download."""
    log = Path(os.environ["NAS_TEST_DATA_LOG"])
    rank = os.environ["RANK"]
    with log.open("a") as f:
        f.write(f"{rank} start {download} {time.time()}\n")
    if download:
        time.sleep(1.0)  # a download takes a while
    data = nas.data.cifar10(root, train, False)
    with log.open("a") as f:
        f.write(f"{rank} end {download} {time.time()}\n")
    return data


def _buffers_worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    """Run a search; save this rank's buffers after every epoch."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NAS_DIST_TIMEOUT="60",
                      NAS_TEST_DATA_LOG=str(Path(out) / "data.log"))
    torch.set_num_threads(1)
    nas.DATASETS.register("logged_cifar10", _logged_cifar10, override=True)
    real_end_epoch, saved = nas.search.end_epoch, []

    def end_epoch(setup, *args, **kwargs):
        metrics = real_end_epoch(setup, *args, **kwargs)
        saved.append({n: b.clone() for n, b in setup.model.named_buffers()})
        torch.save(saved, Path(out) / f"rank{rank}.pt")
        return metrics

    nas.search.end_epoch = end_epoch
    (Path(out) / f"rank{rank}.code").write_text(str(main(argv)))


@pytest.mark.slow
def test_ranks_hold_the_same_batch_norm_statistics_and_rank_0_downloads(tmp_path, tiny_config):
    """In gdas mode the weight step runs outside DDP's hooks and the architecture step outside
    DDP: without the end-of-epoch average each rank keeps the running statistics of its own
    slices. And with data.download, rank 0 fetches the data while the other rank waits."""
    out = tmp_path / "rec"
    out.mkdir()
    argv = ["search", "--config", str(tiny_config), "--device", "cpu", "--quiet",
            "--run-dir", str(tmp_path / "run"), "--set", "data.dataset=logged_cifar10",
            "data.download=true"]
    ctx = mp.start_processes(_buffers_worker, (2, free_port(), argv, str(out)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + TIMEOUT
    try:
        while not ctx.join(timeout=max(deadline - time.time(), 0.1)):
            if time.time() > deadline:
                pytest.fail(f"the 2 processes did not finish in {TIMEOUT} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    assert [(out / f"rank{r}.code").read_text() for r in (0, 1)] == ["0", "0"]
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert len(r0) == len(r1) == 2  # epochs
    for a, b in zip(r0, r1):
        floats = [n for n in a if a[n].is_floating_point()]
        assert len(floats) > 50 and a.keys() == b.keys()
        assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])][:5]
    assert any(not torch.equal(r0[0][n], r0[1][n]) for n in floats)  # the statistics do move
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(checkpoint[n], r1[-1][n]) for n in r1[-1])  # what rank 0 saved
    calls = [line.split() for line in (out / "data.log").read_text().splitlines()]
    assert [(rank, what) for rank, what, _, _ in calls] == \
        [("0", "start"), ("0", "end"), ("1", "start"), ("1", "end")]
    assert calls[0][2] == "True"  # rank 0 downloads first; rank 1 waited for it
    assert float(calls[2][3]) >= float(calls[1][3])


@pytest.mark.parametrize("on_device", [True, False], ids=["on-device", "loader"])
def test_rank_slices_rebuild_the_one_process_batches(cifar_root, on_device):
    data = nas.data.load_dataset("cifar10", cifar_root, train=True, image_size=8)
    kw = dict(device=torch.device("cpu"), on_device=on_device, pad=2, cutout=3, seed=7)
    one = Batches(data, 16, train=True, **kw)
    ranks = [Batches(data, 16, train=True, shard=(r, 2), **kw) for r in (0, 1)]
    for b in (one, *ranks):
        b.set_epoch(3)
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks):
        assert x0.shape == (8, 3, 8, 8)  # each rank's half of the global batch, augmented alike
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    # evaluation: every image once, each on one rank
    test = [Batches(data, 10, train=False, shard=(r, 2), **kw) for r in (0, 1)]
    labels = [torch.cat([y for _, y in b]) for b in test]
    assert len(labels[0]) == len(labels[1]) == 48
    assert torch.equal(torch.stack(labels, 1).reshape(-1), data.labels)


def test_a_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(nas.distributed, "world_size", lambda: 4)
    with pytest.raises(nas.InputError, match="search.batch_size: 30 is the global batch, split "
                                             "over 4 processes; make it a multiple of 4"):
        nas.distributed.per_rank_batch(30, "search.batch_size")
    assert nas.distributed.per_rank_batch(32, "search.batch_size") == 8


def test_sync_bn_is_refused_on_the_cpu_of_a_distributed_run(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(nas.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(nas.distributed, "_setup_pending", False)
    cfg = nas.config.load_config(tiny_config, ["train.sync_bn=true", "device=cpu"])
    with pytest.raises(nas.InputError, match="train.sync_bn: PyTorch's SyncBatchNorm runs on GPUs"):
        nas.train.train(cfg, nas.parse_genotype(DARTS_V2), tmp_path / "run")
    assert not (tmp_path / "run").exists()
