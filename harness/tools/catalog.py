"""What `bytegolf list formats|codecs|presets|systems` prints: one line per name, what it is and, where
measured, its rough cost on the default model; read from the configs' own leading comments."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from bytegolf.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments"
KINDS = ("formats", "codecs", "presets", "systems")
COST = "# cost on the default model"


def describe(yaml: Path) -> tuple[str, str]:
    """(what, cost) from a config file's leading comment: its first sentence, and its cost line if any."""
    if not yaml.is_file():
        return "", ""
    lines = []
    cost = ""
    for line in yaml.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if line.startswith(COST):
            cost = text.removeprefix("cost on the default model, ").removeprefix("cost on the default model")
        elif not text.startswith("@package"):
            lines.append(text)
    what = " ".join(lines)
    end = what.find(". ")
    return (what[: end + 1] if end >= 0 else what), cost


def _docstring(target: str) -> str:
    """The first line of a registered class's docstring (a plugin or a format without a YAML)."""
    import importlib

    module, cls = target.split(":")
    doc = getattr(importlib.import_module(module), cls).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _rows(group: str, names: list[str]) -> list[tuple[str, str, str]]:
    return [(name, *describe(CONFIG_DIR / group / f"{name}.yaml")) for name in names]


def catalog(kind: str) -> list[tuple[str, str, str]]:
    """(name, what, cost) rows of one kind; systems are those the default compare ranks."""
    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS

    if kind == "formats":
        return [(n, what or _docstring(FORMATS[n]), cost) for n, what, cost in _rows("format", sorted(FORMATS))]
    if kind == "codecs":
        return _rows("codec", sorted({*CODECS, *(p.stem for p in (CONFIG_DIR / "codec").glob("*.yaml"))}))
    if kind == "presets":
        return _rows("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
    if kind == "systems":
        cc = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "compare.yaml"))["compare"]
        rows = []
        for ref in cc["references"]:
            what, cost = describe(CONFIG_DIR / "experiment" / f"{ref}.yaml")
            rows.append((ref, f"reference export: {what}", cost))
        for label in cc["formats"]:
            if label in cc.get("variants", {}):
                v = cc["variants"][label]
                settings = ", ".join(f"{k}={val}" for k, val in v.get("params", {}).items())
                rows.append((label, f"variant of {v['format']} ({settings})", describe_format(v["format"])[1]))
            else:
                rows.append((label, *describe_format(label)))
        for label, spec in (cc.get("allocated") or {}).items():
            n = len(spec.get("candidates") or [])
            rows.append((label, f"per-tensor allocation of {spec.get('format')} over {n} candidates per budget", ""))
        return rows
    raise ConfigError(f"bytegolf list: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def describe_format(name: str) -> tuple[str, str]:
    """(what, cost) of a format from its YAML."""
    return describe(CONFIG_DIR / "format" / f"{name}.yaml")


def render(kind: str) -> str:
    """The rows of one kind as aligned text lines."""
    rows = catalog(kind)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{n:<{width}}  {what}" + (f"  [default model, {cost}]" if cost else "") for n, what, cost in rows)
