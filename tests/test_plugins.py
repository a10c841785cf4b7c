"""The second example plugin (scripts/example_plugin_concat.py), by file path and as an installed
package: search, retrain, evaluate, its genotype string; op factories registered twice; ops that
return the wrong shape or fail, named with their edge, cell and stride."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nas
from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "scripts" / "example_plugin_concat.py"
OPS = {"skip_connect", "dw_sep_5x5", "dil3_conv_3x3", "avg_pool_2x2"}
TINY = ["data.image_size=8", "supernet.C=4", "search.epochs=1", "search.steps_per_epoch=2",
        "search.batch_size=16", "network.C=4", "network.cells_per_stage=1", "train.epochs=1",
        "train.steps_per_epoch=2", "train.batch_size=16", "train.eval_batch_size=20"]


def check_concat_genotype(genotype: nas.Genotype, space: str) -> None:
    """What the concat space derives: its space, cells, declared output and one input a cell."""
    assert genotype.space == space
    assert set(genotype.cells) == {"normal", "reduce"}
    assert genotype.concat == {"normal": (2, 3), "reduce": (2, 3)}  # declared, not {}
    assert genotype.inputs == {"normal": 1, "reduce": 1}
    for nodes in genotype.cells.values():
        assert [[src for _, src in node] for node in nodes] == [[0], [0, 1], [0, 1, 2]]
        assert {op for node in nodes for op, _ in node} <= OPS


def test_concat_plugin_by_path_searches_retrains_evaluates_and_round_trips(tmp_path, cifar_root,
                                                                           capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the plugin by a path relative to the repository
    run = tmp_path / "run"
    code = main(["run", "--config", "configs/example_plugin_concat.yaml", "--data-dir",
                 str(cifar_root), "--run-dir", str(run), "--quiet", "--set", *TINY])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    space = f"{PLUGIN}:SPACE"  # stored absolute
    genotype = nas.Genotype.load(run / "search" / "genotype.json")
    check_concat_genotype(genotype, space)
    data = json.loads((run / "search" / "genotype.json").read_text())
    assert data["concat"] == {"normal": [2, 3], "reduce": [2, 3]}
    text = data["string"]
    assert text == str(genotype) and f"genotype: {text}" in out
    assert nas.parse_genotype(text) == genotype  # the text form names the space and reads back
    result = json.loads((run / "train" / "result.json").read_text())
    assert result["genotype"] == text and result["space"] == space and result["params"] > 0

    # evaluate: the checkpoint names a file path, so it needs --plugin (data never imports code)
    assert main(["evaluate", "--checkpoint", str(run / "train"), "--data-dir", str(cifar_root)]) == 2
    assert f"pass --plugin {space}" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run / "train"), "--data-dir", str(cifar_root),
                 "--plugin", space]) == 0
    assert f"test accuracy: {result['test_acc']:.2f}%" in capsys.readouterr().out

    # the string, fed back: shown as the same cells, and retrained with the space's config
    assert main(["genotype", "show", text]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == text and "normal cell (states 0: input, then the nodes):" in shown
    assert "  output = concat(2, 3)" in shown
    again = tmp_path / "again"
    assert main(["train", "--genotype", text, "--config", "configs/example_plugin_concat.yaml",
                 "--data-dir", str(cifar_root), "--run-dir", str(again), "--quiet", "--set",
                 *TINY]) == 0, capsys.readouterr().err
    assert json.loads((again / "result.json").read_text())["params"] == result["params"]
    assert main(["genotype", "plot", text, "--out", str(tmp_path / "pics")]) == 0
    capsys.readouterr()
    dot = (tmp_path / "pics" / "genotype_reduce.dot").read_text()
    assert '"0" [label="0: input"' in dot and '"2" -> "out"' in dot and '"3" -> "out"' in dot
    assert '"1" -> "out"' not in dot


def write_package(site: Path, module: str = "space") -> None:
    """The example plugin as an installed distribution: a package, and the dist-info metadata
    (entry points) that pip writes, in a directory on the path."""
    package = site / "concat_cells_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / f"{module}.py").write_text(PLUGIN.read_text())
    info = site / "concat_cells_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: concat_cells_pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[nas.search_spaces]\nconcat_cells = concat_cells_pkg.{module}:SPACE\n")


def nas_command(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m nas ...`` in a fresh process that has the package installed (on its path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_concat_plugin_as_a_package_and_by_path_in_one_process(tmp_path, cifar_root):
    site = tmp_path / "site"
    write_package(site)
    config = tmp_path / "packaged.yaml"
    settings = yaml.safe_load((ROOT / "configs" / "example_plugin_concat.yaml").read_text())
    config.write_text(yaml.safe_dump({**settings, "space": "concat_cells"}))

    listed = nas_command(["list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "concat_cells  entry point concat_cells_pkg (concat_cells_pkg.space:SPACE)" in listed.stdout
    run = tmp_path / "packaged"
    done = nas_command(["run", "--config", str(config), "--data-dir", str(cifar_root), "--run-dir",
                        str(run), "--quiet", "--set", *TINY], site, tmp_path)
    assert done.returncode == 0, done.stderr
    check_concat_genotype(nas.Genotype.load(run / "search" / "genotype.json"), "concat_cells")
    # an installed plugin is trusted: evaluating its checkpoint needs no --plugin
    evaluated = nas_command(["evaluate", "--checkpoint", str(run / "train"), "--data-dir",
                             str(cifar_root)], site, tmp_path)
    assert evaluated.returncode == 0 and "test accuracy:" in evaluated.stdout, evaluated.stderr

    # the same plugin by its file path while the package is installed: its ops are the same
    # factories, registered a second way, which is no conflict
    by_path = nas_command(["search", "--config", str(ROOT / "configs" / "example_plugin_concat.yaml"),
                           "--data-dir", str(cifar_root), "--run-dir", str(tmp_path / "by_path"),
                           "--quiet", "--set", *TINY], site, ROOT)
    assert by_path.returncode == 0, by_path.stderr
    check_concat_genotype(nas.Genotype.load(tmp_path / "by_path" / "genotype.json"), f"{PLUGIN}:SPACE")

    # an edited copy defines dw_sep_5x5 otherwise: one line naming both origins
    edited = tmp_path / "edited_plugin.py"
    edited.write_text(PLUGIN.read_text().replace("nn.Conv2d(C, C, 1, bias=False), nas.ops.batch_norm(C",
                                                 "nn.Conv2d(C, C, 1, bias=True), nas.ops.batch_norm(C"))
    clash = nas_command(["search", "--config", str(ROOT / "configs" / "example_plugin_concat.yaml"),
                         "--data-dir", str(cifar_root), "--run-dir", str(tmp_path / "clash"),
                         "--set", f"space={edited}:SPACE", *TINY], site, ROOT)
    err = clash.stderr.strip().splitlines()
    assert clash.returncode == 2 and len(err) == 1, clash.stderr
    assert ("op 'dw_sep_5x5' is registered twice, with different definitions: by python "
            f"(concat_cells_pkg.space) and by file ({edited})") in err[0]
    assert not (tmp_path / "clash").exists()


def test_the_same_factory_twice_is_no_conflict_and_two_factories_name_both(tmp_path):
    body = ("import nas\nfrom torch import nn\n\n@nas.OPS.register('twice_op_x')\n"
            "def twice(C, stride, affine, track):\n    return nn.Conv2d(C, C, 3, stride, 1)\n")
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(body)
    first = nas.registry.load_object(f"{tmp_path / 'a.py'}:twice")
    second = nas.registry.load_object(f"{tmp_path / 'b.py'}:twice")
    assert first is not second and nas.OPS.get("twice_op_x") is first  # the first stays
    entry = next(e for e in nas.OPS.entries() if e.name == "twice_op_x")
    assert entry.source == f"file ({tmp_path / 'a.py'})"
    (tmp_path / "c.py").write_text(body.replace("3, stride, 1", "5, stride, 2"))
    with pytest.raises(nas.InputError) as info:
        nas.registry.load_object(f"{tmp_path / 'c.py'}:twice")
    message = str(info.value)
    assert "\n" not in message and (
        f"op 'twice_op_x' is registered twice, with different definitions: by file "
        f"({tmp_path / 'a.py'}) and by file ({tmp_path / 'c.py'})") in message
    # a closure over another value is another factory too; the same value is the same
    reg = nas.Registry("widget")

    def maker(k):
        return lambda: k
    reg.register("w", maker(1))
    reg.register("w", maker(1))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("w", maker(2))


BAD_STRIDE = PLUGIN.read_text().replace(  # the depthwise conv forgets its stride
    "nn.Conv2d(C, C, 5, stride, 2, groups=C", "nn.Conv2d(C, C, 5, 1, 2, groups=C").replace(
    '"dw_sep_5x5"', '"dw_sep_5x5_nostride"').replace('"dil3_conv_3x3"', '"dil3_b"').replace(
    '"avg_pool_2x2"', '"avg_pool_2x2_b"')
FAILING = PLUGIN.read_text().replace(  # the pool fails on its input
    "return AvgPool2x2(stride)", "return nn.Conv2d(C + 1, C, 1)").replace(
    '"dw_sep_5x5"', '"dw_sep_5x5_c"').replace('"dil3_conv_3x3"', '"dil3_c"').replace(
    '"avg_pool_2x2"', '"avg_pool_2x2_c"')


@pytest.mark.parametrize("source, message", [
    (BAD_STRIDE, "op 'dw_sep_5x5_nostride' on edge 1<-0 of cell 'cells.1.cell' (a reduction "
                 "cell), stride 2, returned shape (2, 4, 8, 8) from an input of shape (2, 4, 8, 8); "
                 "an op must return [N, C, H/stride, W/stride], here (2, 4, 4, 4)"),
    (FAILING, "op 'avg_pool_2x2_c' on edge 1<-0 of cell 'cells.0.cell', stride 1, failed on an "
              "input of shape (2, 4, 8, 8): RuntimeError: "),
], ids=["wrong-stride", "raises"])
def test_forward_errors_name_the_op_edge_cell_and_stride(tmp_path, cifar_root, capsys, source,
                                                         message):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(source)
    run = tmp_path / "run"
    code = main(["search", "--config", str(ROOT / "configs" / "example_plugin_concat.yaml"),
                 "--data-dir", str(cifar_root), "--run-dir", str(run), "--set",
                 f"space={plugin}:SPACE", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not run.exists()


def test_the_network_check_names_the_op_of_the_genotype_cell():
    from nas.spaces import check_network
    space = f"{PLUGIN}:SPACE"
    nas.registry.load_object(space)
    nodes = [[("skip_connect", 0)], [("skip_connect", 0), ("skip_connect", 1)],
             [("avg_pool_2x2", 0), ("skip_connect", 1), ("skip_connect", 2)]]
    genotype = nas.Genotype({"normal": nodes, "reduce": nodes}, {"normal": (2, 3), "reduce": (2, 3)})
    net = nas.build_network(space, genotype, 10, {"C": 4})
    net.cells[1].cell.ops[3].stride = 1  # the reduction cell's pool forgets its stride
    with pytest.raises(nas.InputError, match=r"op 'avg_pool_2x2' on edge 3<-0 of reduce cell "
                                             r"'cells.1.cell', stride 2, returned shape \(2, 4, 8, 8\)"):
        check_network(net, 10, 8, "search space 'x'")


def test_a_supernet_concat_is_checked_against_its_cells():
    class Bad(nas.Supernet):
        def __init__(self, concat):
            super().__init__(cells={"cell": (6, ("skip_connect",))}, cell_inputs=1, concat=concat)

    assert Bad({"cell": (1, 3)}).genotype().concat == {"cell": (1, 3)}
    with pytest.raises(nas.InputError, match="concat of cell kind 'cell' names state 4, but its "
                                             r"cells have states 0..3"):
        Bad((2, 4))
    with pytest.raises(nas.InputError, match="concat names cell kind 'normal'"):
        Bad({"normal": (2,)})
