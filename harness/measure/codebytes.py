"""Code bytes: the size of the source a reader needs to decode an artifact (Parameter Golf counts code).

The files: the decoder (every module under harness/artifact/, which imports only the core and the plugin
protocols: tests/test_layering.py holds it there), the module of every format and codec the artifact uses,
and, transitively, every project module those files import (errors.py, registry.py, formats/base.py,
codecs/base.py; formats/scalar.py pulls in formats/arrays.py and formats/gptq.py). Third-party and
standard-library code (numpy, torch, zstandard, constriction, ...) is not counted.

code_bytes = the length of raw LZMA2 (xz preset 9e) of the files concatenated in sorted path order,
each as "path\\nlength\\n" + content: deterministic for a given source tree.
"""

from __future__ import annotations

import ast
import importlib.util
import lzma
import os
from pathlib import Path
from typing import Any

from bytegolf.artifact import container
from bytegolf.codecs.base import REGISTRY as CODECS
from bytegolf.codecs.best import DEFAULT_CANDIDATES
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.base import REGISTRY as FORMATS

REPO = Path(__file__).resolve().parents[2]


def read_path() -> list[str]:
    """The decoder's own files: every module under harness/artifact/ and the package init above it."""
    folder = REPO / "harness" / "artifact"
    return ["harness/__init__.py", *sorted(p.relative_to(REPO).as_posix() for p in folder.glob("*.py"))]


# import prefix -> repository folder, longest prefix first
_PACKAGES = (("bytegolf.formats", "formats"), ("bytegolf.codecs", "codecs"), ("bytegolf", "harness"))
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _module_path(module: str) -> str | None:
    """Repository path of a project module ("bytegolf.formats.scalar" -> "formats/scalar.py"), None if foreign."""
    for prefix, folder in _PACKAGES:
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix) + 1 :]
            base = Path(folder, *rest.split(".")) if rest else Path(folder)
            for cand in (base.with_suffix(".py"), base / "__init__.py"):
                if (REPO / cand).is_file():
                    return cand.as_posix()
            return None
    return None


def _imports(path: str) -> set[str]:
    """Project modules a source file imports (anywhere in it, lazy imports included)."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"), filename=path)
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            p = _module_path(name)
            if p is not None:
                found.add(p)
    return found


def _target_path(kind: str, name: str, registry) -> str:
    """Source file of a registered format or codec: a repository path, or (a plugin's) an absolute one."""
    if name not in registry:
        raise ConfigError(f"code bytes: unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    module = registry[name].split(":")[0]
    path = _module_path(module)
    if path is None:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            raise ConfigError(f"code bytes: {kind} {name!r} has no Python source file ({module})")
        return origin
    return path


def code_files(format_names: list[str], codec_names: list[str]) -> list[str]:
    """Sorted repository paths of every source file needed to decode those formats and codecs."""
    codecs = set(codec_names)
    if "best" in codecs:  # an artifact never stores "best": any default candidate may have won
        codecs = (codecs - {"best"}) | set(DEFAULT_CANDIDATES)
    todo = [_target_path("format", f, FORMATS) for f in sorted(set(format_names))]
    todo += [_target_path("codec", c, CODECS) for c in sorted(codecs)]
    todo += read_path()
    files: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in files:
            files.add(path)
            todo.extend(_imports(path))
    return sorted(files)


def code_bytes(format_names: list[str], codec_names: list[str]) -> dict[str, Any]:
    """{"code_bytes": compressed size, "raw_code_bytes": source size, "files": [...], "compression": ...}."""
    files = code_files(format_names, codec_names)
    parts = []
    raw = 0
    for path in files:
        content = (REPO / path).read_bytes()
        raw += len(content)
        label = f"plugin/{Path(path).name}" if Path(path).is_absolute() else path  # the same on every machine
        parts.append(f"{label}\n{len(content)}\n".encode() + content)
    packed = lzma.compress(b"".join(parts), format=lzma.FORMAT_RAW, filters=_FILTERS)
    return {"code_bytes": len(packed), "raw_code_bytes": raw, "files": files, "compression": "lzma2-9e"}


def artifact_names(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(formats, codecs) an artifact file uses, from its checked header and manifest alone."""

    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            manifest, blobs, _ = container.read_header(f, name)
    except OSError as exc:
        raise ArtifactError(f"{name}: cannot read artifact ({exc.strerror or exc})") from None
    units = manifest.get("units")
    if not isinstance(units, list) or not all(isinstance(u, dict) and isinstance(u.get("format"), str) for u in units):
        raise ArtifactError(f"{name}: manifest 'units' is not a list of units with a format name")

    def inner(node: Any) -> set[str]:
        """Formats named by nested settings (a wrapper's base, a basis_delta's parts)."""
        if isinstance(node, dict):
            own = {node["name"]} if node.get("name") in FORMATS else set()
            return own.union(*(inner(v) for v in node.values()))
        return set().union(*(inner(v) for v in node)) if isinstance(node, list) else set()

    formats = {u["format"] for u in units}.union(*(inner((u.get("meta") or {}).get("params")) for u in units))
    parts = [p for u in units for p in ((u.get("meta") or {}).get("parts") or []) if isinstance(p, dict)]
    for part in parts:  # a split unit's part in a format of its own (an LQER-corrected slice)
        if part.get("format") in FORMATS:
            formats |= {part["format"]} | inner((part.get("meta") or {}).get("params"))
    return sorted(formats), sorted({b["codec"] for b in blobs})


def artifact_code_bytes(path: str | os.PathLike[str]) -> dict[str, Any]:
    """code_bytes for the formats and codecs an artifact actually uses (for "best": the winners)."""
    formats, codecs = artifact_names(path)
    return {**code_bytes(formats, codecs), "formats": formats, "codecs": codecs}
