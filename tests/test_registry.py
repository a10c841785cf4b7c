"""The plugin registry: decorator, entry points, module paths, unknown names, `nas list`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nas
from nas.registry import Registry, load_object

PLUGIN_MODULE = '''
import nas
from torch import nn

@nas.OPS.register("{op}")
def conv_1x3(C, stride, affine, track):
    return nn.Conv2d(C, C, (1, 3), stride, (0, 1), bias=False)

class ChainSupernet(nas.Supernet):
    """Three mixed edges in a row."""
    def __init__(self, num_classes=10, mode="gdas", seed=0, C: int = 4):
        ops = ("skip_connect", "{op}")
        super().__init__(mode, {{"chain": (3, ops)}}, seed)
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.edges = nn.ModuleList(nas.MixedEdge(ops, C) for _ in range(3))
        self.head = nn.Linear(C, num_classes)
    def forward(self, x):
        sample = self.sample()["chain"]
        x = self.stem(x)
        for e, edge in enumerate(self.edges):
            x = edge(x, *sample[e])
        return self.head(x.mean((2, 3)))
    def genotype(self):
        idx = self.arch_logits["chain"].argmax(-1).tolist()
        ops = self.op_names["chain"]
        return nas.Genotype({{"chain": [[(ops[i], k)] for k, i in enumerate(idx)]}}, space="chain")

SPACE = nas.SearchSpace(supernet=ChainSupernet, description="a chain of three mixed edges")
'''


def write_plugin(directory: Path, dist: str, module: str, op: str) -> None:
    """A module plus honest dist-info metadata declaring it in the nas.search_spaces group."""
    (directory / f"{module}.py").write_text(PLUGIN_MODULE.format(op=op))
    info = directory / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nas.search_spaces]\nchain = {module}:SPACE\n")


def test_decorator_registers_and_unknown_names_suggest_the_closest():
    reg = Registry("widget")

    @reg.register("spanner")
    def spanner():
        return "spanner"

    reg.register("hammer", obj=lambda: "hammer")
    assert reg.get("spanner") is spanner and reg.get("hammer")() == "hammer"
    assert reg.names() == ["hammer", "spanner"] and "hammer" in reg and len(reg) == 2
    with pytest.raises(nas.InputError, match=r"unknown widget 'spaner'; did you mean 'spanner'\? "
                                             r"\(known: hammer, spanner\)"):
        reg.get("spaner")
    with pytest.raises(ValueError, match=r"widget 'hammer' is registered twice, with different "
                                         r"definitions: by python \(test_registry\) and by python "):
        reg.register("hammer", obj=lambda: "another hammer")
    reg.register("hammer", obj=spanner, override=True)
    assert reg.get("hammer") is spanner


def test_builtins_are_registered_with_their_source():
    assert {"none", "skip_connect", "sep_conv_3x3", "nor_conv_3x3"} <= set(nas.OPS.names())
    assert {"linear", "exponential", "cosine", "step", "constant"} <= set(nas.SCHEDULES.names())
    assert {"cifar10", "cifar100", "imagefolder"} <= set(nas.DATASETS.names())
    spaces = {e.name: e.source for e in nas.SEARCH_SPACES.entries()}
    assert spaces["darts"].startswith("entry point gumbel-nas (search_spaces.darts:SPACE)")
    assert spaces["nasbench201"].startswith("entry point")
    assert all(e.source == "built-in" for e in nas.OPS.entries() if e.name == "sep_conv_3x3")


def test_entry_point_of_an_installed_distribution_is_found(tmp_path, monkeypatch):
    write_plugin(tmp_path, "tinyplug", "tinyplug_space", "conv_1x3_ep")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("search space", "nas.search_spaces")  # a fresh registry rescans entry points
    space = reg.get("chain")
    entry = next(e for e in reg.entries() if e.name == "chain")
    assert entry.source == "entry point tinyplug (tinyplug_space:SPACE)"
    model = space.supernet(10, "gdas", C=4)
    assert model(__import__("torch").randn(2, 3, 8, 8)).shape == (2, 10)
    assert "conv_1x3_ep" in nas.OPS  # the plugin's own op registered through the decorator
    assert {"darts", "nasbench201"} <= set(reg.names())


def test_broken_entry_point_is_reported_not_fatal(tmp_path, monkeypatch):
    info = tmp_path / "brokenplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[nas.search_spaces]\nbroken = no_such_module_xyz:SPACE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("search space", "nas.search_spaces")
    assert "darts" in reg.names() and "broken" not in reg.names()
    entry = next(e for e in reg.entries() if e.name == "broken")
    assert "ModuleNotFoundError" in entry.error
    with pytest.raises(nas.InputError, match="'broken' .* failed to load: ModuleNotFoundError"):
        reg.get("broken")


def test_module_path_strings_load_files_and_modules(tmp_path, monkeypatch):
    (tmp_path / "local_space.py").write_text(PLUGIN_MODULE.format(op="conv_1x3_file"))
    space = nas.SEARCH_SPACES.get(f"{tmp_path / 'local_space.py'}:SPACE")
    assert isinstance(space, nas.SearchSpace)
    entry = next(e for e in nas.SEARCH_SPACES.entries() if e.name.endswith("local_space.py:SPACE"))
    assert entry.source == f"file ({tmp_path.resolve() / 'local_space.py'}:SPACE)"
    (tmp_path / "cwd_space.py").write_text(PLUGIN_MODULE.format(op="conv_1x3_cwd"))
    monkeypatch.chdir(tmp_path)  # a module beside where `nas` runs is importable by name
    assert load_object("cwd_space:ChainSupernet").__name__ == "ChainSupernet"
    assert nas.get_space("cwd_space:ChainSupernet").supernet.__name__ == "ChainSupernet"
    with pytest.raises(nas.InputError, match="has no attribute 'NOPE'"):
        load_object("cwd_space:NOPE")
    with pytest.raises(nas.InputError, match="cannot import module 'missing_mod_xyz'"):
        load_object("missing_mod_xyz:SPACE")
    with pytest.raises(nas.InputError, match="no such file"):
        load_object(f"{tmp_path / 'absent.py'}:SPACE")
    with pytest.raises(nas.InputError, match="not of the form"):
        load_object("no_colon_here")


def test_nas_list_shows_where_each_plugin_came_from(tmp_path):
    write_plugin(tmp_path, "listplug", "listplug_space", "conv_1x3_list")
    (tmp_path / "file_space.py").write_text(PLUGIN_MODULE.format(op="conv_1x3_listfile"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])]))
    out = subprocess.run([sys.executable, "-m", "nas", "list", "--space",
                          f"{tmp_path / 'file_space.py'}:SPACE"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "search spaces:"
    assert any(l.split()[0] == "chain" and "entry point listplug (listplug_space:SPACE)" in l
               for l in lines)
    assert any("darts" in l and "entry point gumbel-nas" in l for l in lines)
    assert any(l.split()[0].endswith("file_space.py:SPACE") and f"file ({tmp_path.resolve() / 'file_space.py'}:SPACE)" in l for l in lines)
    assert any(l.split() == ["sep_conv_3x3", "built-in"] for l in lines)
    for section in ("ops:", "schedules:", "datasets:"):
        assert section in lines


def test_supernet_plugin_mistakes_fail_before_the_first_epoch(tmp_path, cifar_root, capsys):
    import yaml
    from nas.cli import main
    config = tmp_path / "plugin.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(cifar_root), "image_size": 8,
                                               "workers": 0}, "search": {"epochs": 1}}))
    no_genotype = PLUGIN_MODULE.format(op="conv_1x3_nogeno").replace("def genotype(self):",
                                                                     "def not_genotype(self):")
    (tmp_path / "no_geno.py").write_text(no_genotype)
    (tmp_path / "bad_shape.py").write_text(PLUGIN_MODULE.format(op="conv_1x3_shape").replace(
        "nn.Linear(C, num_classes)", "nn.Linear(C, num_classes + 1)"))
    cases = [("no_geno.py", "does not implement genotype()"),
             ("bad_shape.py", "logits of shape (2, 11), expected (2, 10)")]
    for name, message in cases:
        run = tmp_path / f"run_{name}"
        code = main(["search", "--config", str(config), "--run-dir", str(run), "--quiet",
                     "--set", f"space={tmp_path / name}:SPACE"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"search space '{tmp_path / name}:SPACE'" in err[0] and message in err[0]
        assert not run.exists()


def test_an_op_loaded_from_a_file_lists_the_file_as_its_origin(tmp_path):
    path = tmp_path / "op_file.py"
    path.write_text(PLUGIN_MODULE.format(op="conv_1x3_origin"))
    load_object(f"{path}:SPACE")
    entry = next(e for e in nas.OPS.entries() if e.name == "conv_1x3_origin")
    assert entry.source == f"file ({path})"
