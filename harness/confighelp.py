"""`bytegolf VERB --help`: the verb's config groups with their choices, and every key with its default and the
comment its YAML gives it (the YAML comments are the one source of key documentation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments"
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def comments(yaml: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the inline comment on its line (and on continuation comment lines below it)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in yaml.read_text().splitlines():
        m = _KEY.match(line)
        if m is None:
            cont = line.strip()
            if last and cont.startswith("#") and line.index("#") > 0:
                out[last] += " " + cont.lstrip("#").strip()
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([prefix, *(k for _, k in stack), key] if prefix else [*(k for _, k in stack), key])
        stack.append((indent, key))
        last = None
        if "#" in rest and not rest.strip().startswith(("'", '"')):
            out[path] = rest.split("#", 1)[1].strip()
            last = path
    return out


def leading(yaml: Path) -> str:
    """A YAML file's leading comment block as one paragraph."""
    lines = []
    for line in yaml.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line and not line.startswith("# cost on the default model"):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key, unresolved value) of every leaf; lists as one value."""
    if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
        out = []
        for key in node:
            out += _leaves(node._get_node(key), f"{path}{key}.")
        return out or [(path.rstrip("."), {})]
    if isinstance(node, ListConfig) and not node._is_missing() and not node._is_none():
        return [(path.rstrip("."), OmegaConf.to_container(node, resolve=False))]
    return [(path.rstrip("."), node._value())]


def task_help(verb: str, config_name: str, cfg: DictConfig) -> str:
    """The help text of a Hydra verb from its composed default config `cfg` and the YAML files behind it."""
    primary = CONFIG_DIR / f"{config_name}.yaml"
    node = OmegaConf.load(primary)
    chosen: dict[str, str] = {}
    for d in node.get("defaults", []):
        if isinstance(d, DictConfig):
            for k, v in d.items():
                group = str(k).removeprefix("optional ").removeprefix("override ")
                if (CONFIG_DIR / group).is_dir():
                    chosen[group] = str(v)
    notes = comments(primary)
    about = leading(primary)
    about = about[: about.find(". ") + 1] if ". " in about else about
    lines = [f"usage: bytegolf {verb} [KEY=VALUE | GROUP=CHOICE ...]", f"  {about}", "", "config groups:"]
    for group, default in chosen.items():
        choices = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        marked = ", ".join(f"{c}*" if c == default else c for c in choices)
        lines.append(f"  {group}={{{marked}}}")
        if default not in ("null", "None") and (CONFIG_DIR / group / f"{default}.yaml").is_file():
            notes |= comments(CONFIG_DIR / group / f"{default}.yaml", group)
            about = leading(CONFIG_DIR / group / f"{default}.yaml")
            if about:
                lines.append(f"      {about}")
    lines += ["", "keys (defaults as composed; * marks a required value):"]
    for key, value in _leaves(cfg):
        if key.startswith("hydra"):
            continue
        shown = "*" if value == "???" else repr(value) if isinstance(value, str) else value
        note = notes.get(key, "")
        lines.append(f"  {key} = {shown}" + (f"   # {note}" if note else ""))
    lines += ["", "Hydra flags also work: -m (sweep), --cfg job (print the composed config), hydra/launcher=joblib."]
    return "\n".join(lines)
