"""Formats and codecs depend only on the small core, and third-party ones register through entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from bytegolf import registry
from bytegolf.codecs import REGISTRY as CODECS
from bytegolf.codecs.base import Codec
from bytegolf.errors import ConfigError
from bytegolf.formats import REGISTRY as FORMATS
from bytegolf.formats.base import BUILTIN, Format

CORE = {"bytegolf", "bytegolf.errors", "bytegolf.registry"}


def _modules_after(code: str) -> set[str]:
    """bytegolf.* and torch modules loaded by a fresh interpreter after running `code`."""
    listing = "sorted(m for m in sys.modules if m.startswith(('bytegolf', 'torch')))"
    probe = f"{code}\nimport sys, json\nprint(json.dumps({listing}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_package_root_and_core_are_import_light() -> None:
    assert _modules_after("import bytegolf") == {"bytegolf"}
    assert _modules_after("import bytegolf.registry") == CORE  # errors + registry: nothing else, no torch


def test_formats_and_codecs_import_only_the_core() -> None:
    code = (
        "import bytegolf.formats, bytegolf.codecs\n"
        "for r in (bytegolf.formats.REGISTRY, bytegolf.codecs.REGISTRY):\n"
        "    [r.load(n) for n in r]"
    )
    mods = {m for m in _modules_after(code) if m.startswith("bytegolf")}
    harness = mods - CORE - {m for m in mods if m.startswith(("bytegolf.formats", "bytegolf.codecs"))}
    assert not harness, f"formats/codecs pulled in harness modules: {sorted(harness)}"
    assert "bytegolf.formats.passthrough" in mods and "bytegolf.codecs.zstd_codec" in mods


def test_builtins_load_and_agree_with_their_names() -> None:
    assert set(BUILTIN) <= set(FORMATS)
    for reg, base in ((FORMATS, Format), (CODECS, Codec)):
        for name in reg.builtin:
            klass = reg.load(name)
            assert issubclass(klass, base) and klass.name == name and reg.origin(name) == "built-in"


def _fake_registry(monkeypatch: pytest.MonkeyPatch, eps: list[tuple[str, str]]) -> registry.Registry:
    group = "bytegolf.formats"
    fake = [metadata.EntryPoint(name, value, group) for name, value in eps]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [e for e in fake if e.group == group])
    return registry.Registry("format", group, BUILTIN, base=Format)


def test_entry_points_merge_and_builtins_win(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _fake_registry(
        monkeypatch,
        [("scalar", "bytegolf.formats.lowrank:LowRank"), ("pt2", "bytegolf.formats.passthrough:Passthrough")],
    )
    with pytest.warns(UserWarning, match="the built-in format of that name wins"):
        assert reg["scalar"] == BUILTIN["scalar"]
    assert reg.plugins() == {"pt2": "bytegolf.formats.passthrough:Passthrough"}
    assert set(reg) == {*BUILTIN, "pt2"} and len(reg) == len(BUILTIN) + 1
    with pytest.raises(ConfigError, match="declares name 'passthrough'"):  # a class must answer to its name
        registry.instantiate(reg, "format", "pt2", {})


def test_broken_plugins_give_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _fake_registry(
        monkeypatch,
        [
            ("gone", "no_such_module_xyz:Thing"),
            ("notfmt", "bytegolf.codecs.raw:Raw"),
            ("twice", "a_mod:A"),
            ("twice", "b_mod:B"),
        ],
    )
    with pytest.warns(UserWarning, match="more than one distribution"):
        assert "twice" not in reg
    with pytest.raises(ConfigError, match=r"'gone'.*cannot load no_such_module_xyz:Thing"):
        reg.load("gone")
    with pytest.raises(ConfigError, match="not a Format subclass"):
        reg.load("notfmt")
    with pytest.raises(ConfigError, match="more than one distribution"):
        reg.load("twice")
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        reg.load("nope")


PLUGIN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "bytegolf-myfmt"
version = "0.0.1"

[tool.setuptools]
py-modules = ["bytegolf_myfmt"]

[project.entry-points."bytegolf.formats"]
myfmt = "bytegolf_myfmt:MyFormat"
"""

PLUGIN_MODULE = '''\
"""A third-party format: int8 round-to-nearest with one fp32 scale per row."""

import numpy as np
import torch

from bytegolf.formats.base import Encoded, Format, Stream, TensorSpec


class MyFormat(Format):
    name = "myfmt"
    rate_knob = None

    def __init__(self, levels: int = 127) -> None:
        self.levels = levels

    def _recon(self, codes, scale, spec):
        q = torch.from_numpy(np.array(codes, dtype=np.int64)) - self.levels
        w = q.to(torch.float32) * torch.from_numpy(np.array(scale, dtype=np.float32))
        return w.reshape(spec.shape).to(spec.torch_dtype)

    def encode(self, tensors, ctx):
        ((name, w),) = tensors.items()
        spec = TensorSpec.of(name, w)
        rows = w.detach().float().reshape(w.shape[0], -1)
        scale = (rows.abs().amax(1, keepdim=True) / self.levels).clamp_min(1e-12)
        codes = (torch.round(rows / scale).clamp(-self.levels, self.levels) + self.levels).to(torch.uint8).numpy()
        scale = scale.numpy().astype(np.float32)
        return Encoded(
            format=self.name,
            tensors=[spec],
            streams={"codes": Stream(codes, "codes", alphabet=2 * self.levels + 1), "scales": Stream(scale, "scales")},
            recon={name: self._recon(codes, scale, spec)},
            nominal_bits=float(codes.size * 8 + scale.size * 32),
        )

    def decode(self, enc):
        (spec,) = enc.tensors
        return {spec.name: self._recon(enc.streams["codes"].data, enc.streams["scales"].data, spec)}
'''


def _bytegolf(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytegolf.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_plugin_distribution_adds_a_format_to_bytegolf_run(tiny_bundle: Path, tmp_path: Path) -> None:
    """Build and install a plugin distribution (offline), then `bytegolf run format=myfmt` uses it.

    It goes into its own --target directory put on PYTHONPATH, not into the shared venv, so other
    processes using the venv meanwhile never see it; the directory is removed at the end."""
    from tests.integration.test_run import TINY_ARGS

    src = tmp_path / "plugin"
    src.mkdir()
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "bytegolf_myfmt.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    site = tmp_path / "site"
    try:
        pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        proc = subprocess.run(
            [*pip, "--target", str(site), str(src)], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "run"
        out.mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
        args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format=myfmt", "codec=zstd", f"hydra.run.dir={out}"]
        proc = _bytegolf(args, out, env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        result = json.loads((out / "result.json").read_text())
        assert result["format"] == "myfmt", result["format"]
        from bytegolf.artifact import container

        units = container.read_manifest(out / "model.bgz")["units"]
        assert any(u.get("format") == "myfmt" for u in units)
        assert 0 < result["rel_mse"] < 1e-3  # int8 per-row RTN is close
        # without the plugin on the path, the name is unknown and says so in one line
        proc = _bytegolf([*args[:-1], f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path, dict(os.environ))
        assert proc.returncode == 2 and "unknown format 'myfmt'" in proc.stderr
    finally:
        shutil.rmtree(site, ignore_errors=True)
