"""The documentation site: its snippets run, its commands print what the pages say, its generated
reference pages follow the code, and no page is a stub.

Marks in the pages (HTML comments, invisible on the site and on GitHub) say how a console block
just below them is checked:

- ``<!-- test: output -->``: every ``$ command`` of the block runs from the repository root and
  prints exactly the lines the block shows after it (a line ``...`` stands for any lines); the
  exit status is 2 where the output ends with an error line, else 0;
- ``<!-- test: tiny -->``: the commands run in order in a scratch directory, on the tiny CIFAR-10
  of the fixtures and with tiny settings, and must succeed and print lines that start as the
  block's lines do (a tutorial followed literally, fast);
- ``<!-- test: layers -->``: the picture of the layers of ``nas/`` (development.md), checked
  against the imports of the code.

Python blocks run as written, one process per page, in a scratch directory (``../shared/data``
replaced by the tiny CIFAR-10); a block just below ``<!-- test: skip (why) -->`` is left out.

The real outputs of the pages that ``scripts/docs_outputs.py`` runs (the tutorial's ``tiny``
blocks, and the Python output shown below ``<!-- test: printed -->``) are its record's: the
pages must show exactly what it recorded, name only run paths the runs wrote, and the commands
still print lines of the same shape on tiny settings today. Every `nas` command a page shows
must parse with today's command line.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED = ROOT.parent / "shared"
PAGES = sorted(p for p in DOCS.rglob("*.md"))

# what makes the tutorial's commands take a second: 8x8 images, C=4, 3 cells, 2 steps an epoch
TINY = ("data.image_size=8 data.pad=1 data.limit=null data.test_limit=null supernet.C=4 "
        "supernet.cells=3 search.epochs=2 search.batch_size=16 search.steps_per_epoch=2 "
        "network.C=4 network.cells=3 train.epochs=3 train.batch_size=16 train.steps_per_epoch=2 "
        "train.cutout=4 train.eval_batch_size=20")


def script(name: str):
    """A module of ``scripts/`` (``gen_docs``, ``docs_outputs``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


OUTPUTS = script("docs_outputs")
blocks, commands = OUTPUTS.blocks, OUTPUTS.commands  # how a page's blocks and commands are read


def generated() -> dict[str, str]:
    """The generated reference pages, as the site build makes them."""
    gen_docs = script("gen_docs")
    gen_docs._tree_first()  # the pages of this tree's code, as the hook makes them
    return {uri: make() for uri, make in gen_docs.PAGES.items()}


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A page's command, with ``nas`` and ``python`` this interpreter and this tree."""
    argv = shlex.split(command)
    if argv[0] == "nas":
        argv = [sys.executable, "-m", "nas", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def matches(expected: list[str], got: list[str]) -> bool:
    """Whether ``got`` is ``expected`` with each ``...`` line standing for any lines."""
    if not expected:
        return not got
    if expected[0] == "...":
        return any(matches(expected[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and got[0] == expected[0] and matches(expected[1:], got[1:])


def marked(mark: str) -> list[tuple[str, str]]:
    """``(page, body)`` of the blocks marked ``mark``, in the pages and the generated ones."""
    texts = {str(p.relative_to(DOCS)): p.read_text() for p in PAGES}
    texts.update(generated())
    return [(page, body) for page, text in texts.items()
            for m, _, body in blocks(text) if m == mark]


OUTPUT_BLOCKS = marked("output")


@pytest.mark.parametrize("page,body", OUTPUT_BLOCKS,
                         ids=[f"{p}:{commands(b)[0][0][:40]}" for p, b in OUTPUT_BLOCKS])
def test_console_block_prints_what_the_page_shows(page, body):
    if "../shared" in body and not SHARED.is_dir():
        pytest.skip("needs the shared data beside the repository")
    for command, expected in commands(body):
        out = run(command, ROOT)
        got = (out.stdout + out.stderr).rstrip("\n").split("\n")
        assert matches(expected, got), f"{page}: $ {command}\nprinted:\n" + "\n".join(got)
        error = expected and ": error: " in expected[-1]
        assert out.returncode == (2 if error else 0), (command, out.returncode)


def test_output_blocks_are_found():
    pages = {page for page, _ in OUTPUT_BLOCKS}
    assert {"reference/errors.md", "how-to/budget.md"} <= pages


@pytest.mark.slow
def test_tutorial_works_on_tiny_settings(tmp_path, cifar_root):
    """The tutorial's commands, in order, as a new user types them (tiny settings added)."""
    steps = [c for page, body in marked("tiny") if page == "tutorial.md" for c in commands(body)]
    assert [c.split()[:2] for c, _ in steps][:2] == [["nas", "search"], ["nas", "genotype"]]
    assert {"train", "evaluate"} <= {c.split()[1] for c, _ in steps}
    for command, expected in steps:
        command = command.replace("../shared/data", str(cifar_root))
        command = command.replace("configs/", f"{ROOT}/configs/")
        if command.split()[1] in ("search", "train", "run"):
            command += " --set " + TINY
        out = run(command, tmp_path)
        assert out.returncode == 0, f"$ {command}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        got = out.stdout.rstrip("\n").split("\n")
        heads = [head(line) for line in expected if line != "..."]
        it = iter(head(line) for line in got)
        assert all(h in it for h in heads), f"$ {command}\nexpected lines starting {heads}:\n" \
            + out.stdout
    assert (tmp_path / "runs" / "first-train" / "result.json").is_file()


def head(line: str) -> str:
    """What a line of output starts with, before its first number, value or name."""
    return re.split(r"[=:(\d]", line)[0]


def python_blocks() -> list[tuple[str, list[str]]]:
    out = []
    for path in [ROOT / "README.md", *PAGES]:
        code = [body for mark, lang, body in blocks(path.read_text())
                if lang == "python" and mark != "skip"]
        if code:
            out.append((str(path.relative_to(ROOT)), code))
    return out


RUNNER = """
import sys
for i, code in enumerate(sys.argv[2:]):
    exec(compile(code, f"{sys.argv[1]} python block {i + 1}", "exec"), {"__name__": f"doc_{i}"})
print("ran", len(sys.argv) - 2)
"""


@pytest.mark.parametrize("page,code", python_blocks(), ids=[p for p, _ in python_blocks()])
def test_python_blocks_run(page, code, tmp_path, cifar_root):
    code = [c.replace("../shared/data", str(cifar_root)) for c in code]
    out = subprocess.run([sys.executable, "-c", RUNNER, page, *code], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"ran {len(code)}" in out.stdout


def test_python_blocks_are_found():
    pages = dict(python_blocks())
    assert "README.md" in pages and "docs/how-to/plugin.md" in pages
    assert sum(map(len, pages.values())) >= 6


def test_plugin_guide_package_checks_itself(tmp_path):
    """The plugin guide's package, written out as the page says, runs its own check."""
    text = (DOCS / "how-to" / "plugin.md").read_text()
    (source,) = re.findall(r'```python title="my_nas_space/space.py"\n(.*?)```', text, re.S)
    package = tmp_path / "my_nas_space"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "space.py").write_text(source)
    out = subprocess.run([sys.executable, "-m", "my_nas_space.space"], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok: |")


# -- the generated reference ---------------------------------------------------------------------
def test_committed_reference_pages_are_what_the_code_makes():
    """The generated pages are committed (they read on GitHub); a change to the code that
    changes one must come with the page: python scripts/gen_docs.py rewrites them."""
    made = generated()
    assert set(made) == {"reference/cli.md", "reference/config.md", "reference/errors.md",
                         "reference/api.md"}
    for uri, text in made.items():
        path = DOCS / uri
        assert path.is_file(), f"docs/{uri} is missing: run python scripts/gen_docs.py"
        assert path.read_text() == text, f"docs/{uri} is out of date: run python scripts/gen_docs.py"


def test_api_reference_gives_constructor_arguments_and_signatures():
    page = generated()["reference/api.md"]
    sections = dict(re.findall(r"^#{3,4} `([\w.]+)`\n(.*?)(?=^#{2,4} |\Z)", page, re.M | re.S))
    for cls in ("nas.supernet.Supernet", "nas.supernet.SearchCell", "nas.network.GenotypeCell",
                "nas.supernet.MixedEdge"):
        assert "def __init__(" in sections[cls], cls
    for cls in ("nas.supernet.SearchCell", "nas.network.GenotypeCell", "nas.supernet.MixedEdge"):
        assert "wrap: Callable[[str, nn.Module, int], nn.Module] | None = None" in sections[cls]
        assert "``wrap(op_name, op, C) -> nn.Module``" in sections[cls], cls
    assert "@dataclass\nclass Trained:\n    model: nn.Module" in sections["nas.trained.Trained"]
    assert "def load(source: str | Path) -> Trained" in sections["nas.trained.load"]
    assert "def build_network(" in sections["nas.spaces.build_network"]
    # every exported class and function has its section, with a signature in a code block
    import nas
    for name in nas.__all__:
        obj = getattr(nas, name)
        if isinstance(obj, type) or callable(obj) and not isinstance(obj, type(nas)):
            title = f"{obj.__module__}.{obj.__qualname__}"
            if title.startswith("nas."):
                assert "```py\n" in sections.get(title, ""), f"{title} has no signature"


def test_config_reference_is_the_defaults():
    import yaml

    from nas.config import Config, to_dict

    page = generated()["reference/config.md"]
    block = page.split("## All defaults as YAML", 1)[1]
    assert yaml.safe_load(re.search(r"```yaml\n(.*?)```", block, re.S).group(1)) == \
        to_dict(Config())

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from leaves(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", value

    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `([\w.]+)` \| [^|]+ \| `([^`]*)` \| .* \|$", page, re.M)}
    for key, value in leaves(Config()):
        assert key in rows, f"{key} has no row in the configuration reference"
        assert yaml.safe_load(rows[key]) == value, (key, rows[key], value)


def test_every_config_key_has_a_comment():
    """A key added without a comment beside it would reach the reference page undocumented."""
    from nas import config
    meta = script("gen_docs").config_fields(Path(config.__file__))
    classes = [getattr(config, name) for name in meta]
    for cls in (c for c in classes if dataclasses.is_dataclass(c)):
        assert cls.__doc__, cls.__name__  # a section's text on the page
        for f in dataclasses.fields(cls):
            if f.default_factory in classes:  # a section: its class's docstring describes it
                continue
            assert meta[cls.__name__][f.name]["comment"], f"{cls.__name__}.{f.name}"


def test_cli_reference_has_every_verb_and_flag():
    import argparse

    from nas.cli import build_parser
    page = generated()["reference/cli.md"]
    parts = re.split(r"^#+ `(nas[^`]*)`$", page, flags=re.M)
    sections = {"nas": parts[0], **dict(zip(parts[1::2], parts[2::2]))}

    def walk(parser, title):
        assert title in sections, f"{title} has no section"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{title} {name}")
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                flags = ", ".join(action.option_strings)
                assert flags in sections[title], (title, flags)
            elif not action.option_strings:
                name = (action.metavar or action.dest).replace("|", "&#124;")
                assert f"| `{name}" in sections[title], (title, name)

    walk(build_parser(), "nas")


def test_errors_reference_lists_the_messages():
    page = generated()["reference/errors.md"]
    assert "expected a number, got" in page and "CIFAR-10 not found" in page
    raising = {".".join(p.relative_to(ROOT).with_suffix("").parts)
               for p in [*ROOT.joinpath("nas").rglob("*.py"),
                         *ROOT.joinpath("search_spaces").rglob("*.py")]
               if "InputError(" in p.read_text() and p.name != "errors.py"}
    listed = set(re.findall(r"^### `([\w.]+)`$", page, re.M))
    assert raising - listed == set(), "modules whose messages the page misses"
    assert page.count("\n- `") >= 50


# -- the site ------------------------------------------------------------------------------------
def test_every_page_is_in_the_nav_and_none_is_a_stub():
    import yaml

    def uris(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from uris(v)
        elif isinstance(node, list):
            for v in node:
                yield from uris(v)

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    nav = set(uris(config["nav"]))
    written = {str(p.relative_to(DOCS)) for p in PAGES}
    assert written - nav == set(), "pages missing from the nav"
    assert nav - written == set(), "nav entries that are not pages"
    for page in PAGES:
        prose = [line for line in page.read_text().splitlines() if line.strip()]
        assert len(prose) >= 15 and "stub" not in prose[-1], f"{page} is a stub"


# the one build of the site, in CI too (.ci/run installs the docs extra first): there a missing
# mkdocs fails this test instead of skipping it
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None and
                    not (Path(sys.executable).parent / "mkdocs").exists() and
                    os.environ.get("CI") != "true",
                    reason="mkdocs is not installed (pip install -e '.[docs]'); CI builds the site")
def test_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    exe = str(mkdocs) if mkdocs.exists() else shutil.which("mkdocs")
    out = subprocess.run([exe, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=dict(env(), NO_MKDOCS_2_WARNING="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()


# -- the shown outputs ---------------------------------------------------------------------------
RECORD = json.loads(OUTPUTS.RECORD.read_text())
REMAKE = "run OMP_NUM_THREADS=1 python scripts/docs_outputs.py, or --write-only after an edit"


def recorded(page: str, command: str) -> dict:
    """The record of ``command`` on ``page``, as scripts/docs_outputs.py last ran it."""
    return next(c for c in RECORD["pages"][page]["commands"] if c["command"] == command)


def test_pages_show_what_their_commands_printed():
    """Every output shown in a page that scripts/docs_outputs.py runs is the recorded one,
    for the same commands in the same order, and the tutorial names the recorded commit."""
    for page in OUTPUTS.RUN:
        text = (DOCS / page).read_text()
        shown = [body for mark, lang, body in blocks(text)
                 if mark in ("tiny", "printed") and not lang]
        assert shown == OUTPUTS.shown(RECORD, page), f"{page} shows other outputs: {REMAKE}"
    stated = OUTPUTS.STATED.search((DOCS / "tutorial.md").read_text())
    assert stated and (stated.group(1), stated.group(3)) == (RECORD["date"], RECORD["commit"]), \
        REMAKE
    assert all(c["status"] == 0 for p in RECORD["pages"].values() for c in p["commands"])


def test_run_paths_the_pages_name_are_what_the_runs_wrote():
    """`runs/first...` in any page or the README is a file or directory the tutorial's runs wrote."""
    written = set(RECORD["files"])
    assert {"runs/first/genotype.json", "runs/first-train/result.json"} <= written
    for path in [ROOT / "README.md", *PAGES]:
        for named in re.findall(r"runs/first[\w.-]*(?:/[\w.-]+)*", path.read_text()):
            named = named.rstrip(".")
            assert named in written, f"{path.relative_to(ROOT)} names {named}, which no run wrote"


def test_genotype_show_prints_what_the_tutorial_shows(tmp_path):
    """`nas genotype show` of the recorded genotype prints, today, what the tutorial shows."""
    search = next(c for c in RECORD["pages"]["tutorial.md"]["commands"]
                  if c["command"].startswith("nas search"))
    (line,) = [line for line in search["output"] if line.startswith("genotype: ")]
    import nas
    (tmp_path / "runs" / "first").mkdir(parents=True)
    nas.parse_genotype(line.removeprefix("genotype: ")).save(tmp_path / "runs/first/genotype.json")
    out = run("nas genotype show runs/first", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n").split("\n") == \
        recorded("tutorial.md", "nas genotype show runs/first")["output"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="the export extra (onnxruntime) is not installed")
def test_use_from_python_page_runs_on_a_tiny_run(tmp_path, cifar_root):
    """The how-to's export command and Python, in order, on a tiny retraining of DARTS_V2 in
    runs/first-train; each printed line starts as the recorded one does."""
    out = run(f"nas train --genotype DARTS_V2 --config {ROOT}/configs/quick.yaml --data-dir "
              f"{cifar_root} --run-dir runs/first-train --quiet --set {TINY}", tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    page = "how-to/use-from-python.md"
    text = (DOCS / page).read_text()
    for command in (c for block in OUTPUTS.page_commands(text) for c in block):
        out = run(command, tmp_path)
        assert out.returncode == 0, f"$ {command}\n{out.stdout}{out.stderr[-2000:]}"
    code = "\n".join(OUTPUTS.python_code(text)).replace("../shared/data", str(cifar_root))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = out.stdout.rstrip("\n").split("\n")
    want = RECORD["pages"][page]["printed"]
    assert [head(line) for line in got] == [head(line) for line in want], out.stdout
    assert re.search(r"max \|logit difference\| \d\.\d\de-0[5-9]", out.stdout), out.stdout


def named_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every `nas` command line a page or the README shows: the `$ `
    lines of its blocks, and the bare `nas ...` lines of blocks without them (not a shown error
    line ``nas VERB: ...``, nor a synopsis with ``|``, ``[`` or ``...`` or a one-letter
    placeholder)."""
    out = []
    for path in [ROOT / "README.md", *PAGES]:
        for _, lang, body in blocks(path.read_text()):
            if lang not in ("", "sh", "bash", "console"):
                continue
            lines = re.sub(r"\\\n\s*", " ", body).split("\n")  # a `\` continues the line
            typed = [line[2:] for line in lines if line.startswith("$ ")]
            bare = [line.strip() for line in lines if line.strip().startswith("nas ")]
            for line in typed or bare:
                if not line.startswith("nas ") or re.match(r"nas [\w ]+: ", line) or \
                        re.search(r"[|\[]|\.\.\.|(?<![\w$-])[A-Z](?!\w)", line):
                    continue
                out.append((str(path.relative_to(ROOT)), line))
    return out


def test_commands_the_pages_name_parse():
    """Every `nas` command the documentation shows is accepted by today's command line: a
    renamed verb or flag fails here, not in a reader's terminal."""
    import contextlib
    import io

    from nas.cli import build_parser
    found = named_commands()
    assert len(found) >= 30
    for page, line in found:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                build_parser().parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit as exc:
            assert not exc.code, f"{page}: `{line}` does not parse: {err.getvalue().strip()}"


def top_level_imports(path: Path, module: str) -> set[str]:
    """The modules of ``nas`` that ``path`` (the module ``module``) imports at its top level."""
    import ast
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".")
            out |= {base} if node.module else {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nas"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "nas"}
    return out


def test_the_layer_picture_is_the_code():
    """docs/development.md's layers of nas/: every module in it, every top-level import of a
    module pointing down the picture (or within nas/experiments/)."""
    page = (DOCS / "development.md").read_text()
    (body,) = [b for mark, _, b in blocks(page) if mark == "layers"]
    layer = {}
    for height, line in enumerate(reversed(body.strip("\n").split("\n"))):
        for name in re.split(r" {2,}", line)[0].split():
            layer[f"nas.{name}"] = height
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for p in ROOT.joinpath("nas").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert set(modules) == set(layer), "modules of nas/ missing from the picture, or gone"
    for module, path in modules.items():
        for target in top_level_imports(path, module):
            target = target if target in layer else target.rpartition(".")[0]  # from .x import y
            if target not in layer:  # the package itself (nas, nas.experiments)
                continue
            same_package = target.startswith("nas.experiments.") and \
                module.startswith("nas.experiments.")
            assert layer[target] < layer[module] or same_package, \
                f"{module} imports {target}, which is not below it in the picture"
