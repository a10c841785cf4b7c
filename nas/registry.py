"""One registry type for ops, search spaces, temperature schedules, datasets and genotypes.

Three ways in, all ending in the same table:
  * a decorator or call in Python: ``@OPS.register("my_conv")``;
  * an installed package's entry point in the group ``nas.<kind>`` (``nas.search_spaces`` ...);
  * a ``package.module:attr`` or ``path/to/file.py:attr`` string wherever a name is accepted.

The trust boundary: inside the ``nas`` command (``guarded()``), a module path is imported only
when the user named it (``--config`` file, ``--set``, ``--plugin``; see ``trust``). A saved
config, a genotype or a checkpoint is data, so a module path found only there is refused.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError


@dataclass(frozen=True)
class Entry:
    """A registered object and where it came from."""

    name: str
    obj: Any
    source: str  # "built-in", "entry point <dist> (<module:attr>)", "module path (<spec>)", ...
    error: str | None = None  # set when an entry point failed to load


def closest(name: str, known: list[str]) -> str | None:
    """The known name most like ``name``: the same but for case, a similar spelling (case
    ignored), or one a prefix of the other."""
    folded = {k.lower(): k for k in known}
    if name.lower() in folded:
        return folded[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(folded), n=1)
    if match:
        return folded[match[0]]
    prefixed = [k for k in known if k.startswith(name) or name.startswith(k)]
    return min(prefixed, key=lambda k: abs(len(k) - len(name))) if prefixed else None


def _fingerprint(obj: Any) -> Any:
    """What makes two registered objects the same: for a function its name, code, defaults and
    closure; for a class its name and source; else the object itself (compared by ``==``).

    A plugin module imported twice (as an installed package and by its file path) defines its
    factories twice: distinct objects, the same factory.
    """
    import inspect
    import types
    if isinstance(obj, types.FunctionType):
        cells = tuple(_fingerprint(c.cell_contents) for c in obj.__closure__ or ())
        return ("function", obj.__qualname__, obj.__code__, obj.__defaults__,
                tuple(sorted((obj.__kwdefaults__ or {}).items())), cells)
    if isinstance(obj, type):
        try:
            return ("class", obj.__qualname__, inspect.getsource(obj))
        except (OSError, TypeError):
            return ("class", id(obj))
    return obj


def same_object(a: Any, b: Any) -> bool:
    """Whether registering ``b`` where ``a`` is registered registers nothing new (see ``_fingerprint``)."""
    if a is b:
        return True
    try:
        return bool(_fingerprint(a) == _fingerprint(b))
    except Exception:  # objects whose == fails or is not a truth value (tensors): different
        return False


def _caller_source(obj: Any, caller: str = "") -> str:
    # a function or class tells its module; an instance (a genotype) is placed by its caller
    module = (getattr(obj, "__module__", "") if hasattr(obj, "__qualname__") else caller) or ""
    if module.startswith(PLUGIN_MODULE_PREFIX):  # loaded from `path/to/file.py:attr`: show the file
        return f"file ({getattr(sys.modules.get(module), '__file__', module)})"
    if module.split(".")[0] in ("nas", "search_spaces"):
        return "built-in"
    return f"python ({module})" if module else "python"


PLUGIN_MODULE_PREFIX = "_nas_plugin_"


_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_trusted: set[str] = set()
_guarded = False


def _is_file(module_name: str) -> bool:
    return module_name.endswith(".py") or os.sep in module_name or "/" in module_name


def is_spec(text: Any) -> bool:
    """Whether ``text`` is a ``package.module:attr`` or ``file.py:attr`` reference."""
    if not isinstance(text, str):
        return False
    module_name, sep, attr = text.rpartition(":")
    return bool(sep and attr.isidentifier() and module_name
                and (_is_file(module_name) or _MODULE_RE.match(module_name)))


def resolve_spec(spec: str) -> str:
    """A reference with its file path made absolute (from the current directory); others as given."""
    module_name, sep, attr = spec.rpartition(":")
    if not (is_spec(spec) and _is_file(module_name)):
        return spec
    return f"{Path(module_name).expanduser().resolve()}:{attr}"


def trust(spec: str) -> str:
    """Allow ``spec`` (which the user named) to be imported under ``guarded()``; return it resolved."""
    key = resolve_spec(spec)
    _trusted.add(key)
    return key


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Within, import only trusted module paths (the ``nas`` command runs inside this)."""
    global _guarded, _trusted
    old = _guarded, _trusted
    _guarded, _trusted = True, set()  # what one command trusts ends with it
    try:
        yield
    finally:
        _guarded, _trusted = old


def load_object(spec: str) -> Any:
    """Import ``package.module:attr`` or ``path/to/file.py:attr`` and return the attribute."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"'{spec}' is not of the form 'package.module:attr' or 'file.py:attr'")
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"'{spec}': no such file {path}")
            mod_name = f"{PLUGIN_MODULE_PREFIX}{path.stem}_{abs(hash(str(path))) % 10**8}"
            module = sys.modules.get(mod_name)
            if module is None:
                file_spec = importlib.util.spec_from_file_location(
                    mod_name, path, loader=_NoBytecodeLoader(mod_name, str(path)))
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[mod_name] = module
                try:
                    file_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            # A module next to where the user runs `nas` should be found, as `python -m` would.
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(cwd)
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        raise InputError(f"'{spec}': cannot import module '{module_name}' ({exc})") from exc
    except SystemExit as exc:  # the plugin called sys.exit() or exit() while loading
        raise InputError(f"'{spec}': importing '{module_name}' called sys.exit({exc.code!r}); "
                         "a plugin must not exit while it loads") from None
    except Exception as exc:  # a plugin that fails while importing
        raise InputError(f"'{spec}': importing '{module_name}' failed: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"'{spec}': module '{module_name}' has no attribute '{attr}'") from None


class _NoBytecodeLoader(importlib.machinery.SourceFileLoader):
    """Loads a ``file.py:attr`` plugin without writing ``__pycache__/`` beside the user's file."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:  # noqa: D102
        return None


class Registry:
    """A name -> object table of one kind, filled by decorators, entry points and module paths."""

    def __init__(self, kind: str, group: str | None = None, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins  # modules that register built-ins, imported before entry points
        self._entries: dict[str, Entry] = {}
        self._entry_points_loaded = group is None

    def register(self, name: str | None = None, obj: Any = None, *, source: str | None = None,
                 override: bool = False) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does."""
        caller = sys._getframe(1).f_globals.get("__name__", "")

        def add(target: Any) -> Any:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise ValueError(f"cannot register a {self.kind} without a name")
            old = self._entries.get(key)
            where = source or _caller_source(target, caller)
            if old is not None and old.error is None and not override:
                if same_object(old.obj, target):  # the same plugin, imported a second way
                    return target
                raise ValueError(
                    f"{self.kind} '{key}' is registered twice, with different definitions: by "
                    f"{old.source} and by {where}; rename one (or uninstall the package you are "
                    "not editing), or from Python pass override=True to replace it")
            self._entries[key] = Entry(key, target, where)
            return target

        return add if obj is None else add(obj)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for module in self.builtins:  # also found in an install older than their entry points
            importlib.import_module(module)
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            where = f"entry point {dist.name if dist else '?'} ({ep.value})"
            try:
                target = ep.load()
            except (Exception, SystemExit) as exc:  # one broken plugin must not hide the others
                if ep.name not in self._entries:
                    self._entries[ep.name] = Entry(ep.name, None, where,
                                                   error=f"{type(exc).__name__}: {exc}")
                continue
            old = self._entries.get(ep.name)
            if old is None or old.obj is target or old.error is not None:
                self._entries[ep.name] = Entry(ep.name, target, where)

    def get(self, name: str) -> Any:
        """Return the object for a registered name or a ``module:attr`` string."""
        if not isinstance(name, str) or not name:
            raise InputError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._load_entry_points()
        entry = self._entries.get(name)
        if (entry is None or entry.source.startswith(("file (", "module path ("))) and ":" in name:
            key = resolve_spec(name)
            if _guarded and key not in _trusted:
                raise InputError(
                    f"{self.kind} '{name}' is a module path found in a file that is data (a "
                    "saved config, a genotype or a checkpoint), so it was not imported; if "
                    f"you trust that code, pass --plugin {key}")
            entry = self._entries.get(key)
            if entry is None:
                origin = "file" if _is_file(key.rpartition(":")[0]) else "module path"
                entry = Entry(key, load_object(key), f"{origin} ({key})")
                self._entries[key] = entry
            self._entries[name] = entry
        if entry is None:
            raise InputError(self.unknown_message(name))
        if entry.error is not None:
            raise InputError(f"{self.kind} '{name}' ({entry.source}) failed to load: {entry.error}")
        return entry.obj

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown name: the closest match and every known name."""
        known = sorted(self.names())
        close = closest(name, known)
        hint = f"; did you mean '{close}'?" if close else ""
        listed = ", ".join(known) if known else "none registered"
        return f"unknown {self.kind} '{name}'{hint} (known: {listed})"

    def entries(self) -> list[Entry]:
        """Every entry, sorted by name, entry points included."""
        self._load_entry_points()
        unique = {id(e): e for e in self._entries.values()}  # a module path may have two keys
        return sorted(unique.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        """Registered names that loaded, sorted."""
        return [e.name for e in self.entries() if e.error is None]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries and self._entries[name].error is None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"


OPS = Registry("op", "nas.ops")
SEARCH_SPACES = Registry("search space", "nas.search_spaces")
SCHEDULES = Registry("temperature schedule", "nas.schedules")
DATASETS = Registry("dataset", "nas.datasets")
GENOTYPES = Registry("genotype", "nas.genotypes", builtins=("search_spaces.genotypes",))

REGISTRIES: dict[str, Registry] = {
    "search spaces": SEARCH_SPACES, "ops": OPS, "schedules": SCHEDULES, "datasets": DATASETS,
    "genotypes": GENOTYPES,
}

