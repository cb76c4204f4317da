"""The package follows the pipeline: no module imports from a layer above its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bottom to top; a module may import its own layer and the layers below
LAYERS = (
    {"errors", "registry", "fingerprint", "figure", "markdown", "formats", "codecs"},  # core and the plugins
    {"artifact"},  # the decoder: what an artifact needs to be read back
    {"data"},
    {"measure"},
    {"model"},
    {"quantize"},
    {"run"},
    {"search"},
    {"study"},
    {"settings", "cli", "confighelp", "tools", "__init__"},
)
FOLDERS = {"harness": "bytegolf", "formats": "bytegolf.formats", "codecs": "bytegolf.codecs"}


def layer(module: str) -> int:
    """The layer of a dotted bytegolf module ("bytegolf.study.compare" -> study's)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> set[str]:
    """Every bytegolf module a file imports, function-local and TYPE_CHECKING imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bytegolf":
            names = [f"bytegolf.{a.name}" for a in node.names] if node.module == "bytegolf" else [node.module]
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "bytegolf")
    return out


def upward_imports(root: Path) -> list[str]:
    """'file -> module' for every import that points up the table."""
    bad = []
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            me = ".".join((package, *rel.parts)).removesuffix(".__init__")
            bad += [f"{path.relative_to(root)} -> {m}" for m in sorted(imports(path)) if layer(m) > layer(me)]
    return bad


def test_no_module_imports_from_a_layer_above() -> None:
    assert upward_imports(REPO) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "harness" / "artifact").mkdir()
    (tmp_path / "harness" / "artifact" / "file.py").write_text("from bytegolf.errors import ArtifactError\n")
    assert upward_imports(tmp_path) == []
    (tmp_path / "harness" / "artifact" / "file.py").write_text("def f():\n    from bytegolf.quantize import plan\n")
    (tmp_path / "formats" / "x.py").write_text("from bytegolf import cli\n")
    assert upward_imports(tmp_path) == [
        "harness/artifact/file.py -> bytegolf.quantize",
        "formats/x.py -> bytegolf.cli",
    ]


def test_help_imports_no_torch() -> None:
    """`bytegolf --help` answers without importing torch (or any of the pipeline)."""
    code = (
        "import sys\nfrom bytegolf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'bytegolf.study.compare', 'bytegolf.search.allocate') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: bytegolf VERB" in done.stdout and done.stdout.strip().endswith("[]")
