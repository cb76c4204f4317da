"""Every option of every config group under experiments/, every experiment preset and the README's
"Bring your own checkpoint and data" commands compose and resolve the way the `bytegolf` CLI composes them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

import bytegolf.run.sweep  # noqa: F401  (registers the ${repo:} and ${cache:} resolvers, as the CLI's import does)
from bytegolf import cli, settings
from bytegolf.search import allocate
from bytegolf.study import systems

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments"
PRIMARIES = ("run", "train", "compare", "allocate")
# Options whose YAML leaves required keys at ???: the dummy values a user gives on the command line.
REQUIRED = {
    ("data", "parameter_golf"): ["data.dir=/pg/datasets/fineweb10B_sp1024", "data.tokenizer=/pg/tok.model"],
    ("data", "text"): ["data.val=/texts/val/*.txt"],
    ("model", "hf"): ["model.path=/hf/model"],
    ("model", "module"): ["model.file=/code/glue.py", "model.build=build"],
    ("model", "weights"): ["model.checkpoint=/ckpt/model.safetensors"],
}


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    """The schemas `bytegolf.cli.main` puts into the ConfigStore before Hydra starts."""
    settings.register()
    systems.register()
    allocate.register()


def _groups_of(primary: str) -> set[str]:
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{primary}.yaml")).get("defaults", [])
    return {str(k).removeprefix("optional ") for d in defaults if isinstance(d, dict) for k in d}


def _options() -> list[tuple[str, str, str]]:
    """(primary config, group, option) for each experiments/<group>/<option>.yaml and each primary using it."""
    out = []
    for group_dir in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment")):
        users = [p for p in PRIMARIES if group_dir.name in _groups_of(p)]
        assert users, f"config group {group_dir.name} is used by no primary config"
        for yaml in sorted(group_dir.glob("*.yaml")):
            out.extend((primary, group_dir.name, yaml.stem) for primary in users)
    return out


def _compose(primary: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(primary, overrides=overrides, return_hydra_config=hydra)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config resolved; a ??? left anywhere raises."""
    out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(out, dict)
    return out


def _literal(value: Any) -> bool:
    return not (isinstance(value, str) and ("${" in value or value == "???"))


def _assert_contains(composed: Any, expected: Any, where: str) -> None:
    """Every literal value the YAML sets is in the composed config (interpolations and ??? skipped)."""
    if isinstance(expected, dict):
        assert isinstance(composed, dict), f"{where}: {composed!r} is not a mapping"
        for key, value in expected.items():
            assert key in composed, f"{where}.{key} missing from the composed config"
            _assert_contains(composed[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(composed, list) and len(composed) == len(expected), f"{where}: {composed!r} != {expected!r}"
        for i, (c, e) in enumerate(zip(composed, expected, strict=True)):
            _assert_contains(c, e, f"{where}[{i}]")
    elif _literal(expected):
        assert composed == expected, f"{where}: composed {composed!r}, YAML {expected!r}"


def _yaml(path: Path) -> dict[str, Any]:
    body = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(body, dict)
    return body


def _yaml_body(path: Path) -> dict[str, Any]:
    body = _yaml(path)
    body.pop("defaults", None)
    return body


@pytest.mark.parametrize(("primary", "group", "option"), _options(), ids=lambda v: str(v))
def test_every_group_option_composes_and_resolves(primary: str, group: str, option: str) -> None:
    cfg = _compose(primary, [f"{group}={option}", *REQUIRED.get((group, option), [])])
    resolved = _resolved(cfg)
    _assert_contains(resolved[group], _yaml_body(CONFIG_DIR / group / f"{option}.yaml"), group)
    if group in ("format", "codec"):  # the registry entry its schema (base_<name>) was made from
        (base,) = [d for d in _yaml(CONFIG_DIR / group / f"{option}.yaml")["defaults"] if d != "_self_"]
        assert resolved[group]["name"] == base.removeprefix("base_")
    if group == "model":
        assert resolved["model"]["name"] == option


@pytest.mark.parametrize("primary", [p for p in PRIMARIES if "experiment" in _groups_of(p)])
@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes(primary: str, preset: str) -> None:
    resolved = _resolved(_compose(primary, [f"experiment={preset}"]))
    _assert_contains(resolved, _yaml_body(CONFIG_DIR / "experiment" / f"{preset}.yaml"), "")
    defaults = _yaml(CONFIG_DIR / "experiment" / f"{preset}.yaml")["defaults"]
    (fmt,) = [d["override /format"] for d in defaults if isinstance(d, dict) and "override /format" in d]
    assert resolved["format"]["name"] == fmt  # scalar (pg_*), kquant (gguf_*)


def test_plan_embedding_int8_is_the_compares_embedding_rule() -> None:
    run, cmp = _resolved(_compose("run", ["plan=embedding_int8"])), _resolved(_compose("compare", []))
    (rule,) = run["plan"]["rules"]
    assert rule["match"] == "tok_emb.weight" and rule["format"] == "scalar" and rule["optional"] is True
    assert rule["params"] == cmp["compare"]["embedding"]  # one rule: pg_record's int8
    assert _resolved(_compose("run", []))["plan"]["rules"] == []  # a plain run quantizes it with its format


def test_pg_top_preset_keys() -> None:
    resolved = _resolved(_compose("run", ["experiment=pg_top"]))
    assert (resolved["format"]["bits"], resolved["format"]["clip_k"], resolved["codec"]["name"]) == (6, 11.5, "brotli")
    assert [r["match"] for r in resolved["plan"]["rules"]] == ["tok_emb.weight", "blocks.*.attn.*.weight"]
    assert resolved["plan"]["control_patterns"] == []
    assert resolved["layout"]["grouping"] == "all"


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")))
@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/.*' is validated against ConfigStore")
def test_every_launcher_composes(launcher: str) -> None:
    cfg = _compose("run", [f"hydra/launcher={launcher}"], hydra=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(launcher_cfg, dict)
    _assert_contains(launcher_cfg, _yaml_body(CONFIG_DIR / "hydra" / "launcher" / f"{launcher}.yaml"), "launcher")


def test_parameter_golf_data_resolves_under_dir() -> None:
    cfg = _compose("run", ["data=parameter_golf", "data.dir=/srv/fineweb10B_sp1024", "data.tokenizer=/srv/t.model"])
    data = _resolved(cfg)["data"]
    assert data["train"] == "/srv/fineweb10B_sp1024/fineweb_train_*.bin"
    assert data["val"] == "/srv/fineweb10B_sp1024/fineweb_val_*.bin"
    assert (data["dir"], data["tokenizer"], data["kind"]) == ("/srv/fineweb10B_sp1024", "/srv/t.model", "shards")


@pytest.mark.parametrize("missing", ["data.dir", "data.tokenizer"])
def test_parameter_golf_data_requires_dir_and_tokenizer(missing: str) -> None:
    given = [o for o in REQUIRED[("data", "parameter_golf")] if not o.startswith(missing + "=")]
    cfg = _compose("run", ["data=parameter_golf", *given])
    with pytest.raises(MissingMandatoryValue, match=missing):
        getattr(cfg.data, missing.split(".")[1])
    with pytest.raises((MissingMandatoryValue, InterpolationToMissingValueError), match=missing):
        _resolved(cfg)


def test_other_data_options_leave_dir_unset() -> None:
    assert _compose("run", []).data.dir is None
    assert _resolved(_compose("run", ["bundle=/b"]))["data"]["train"] == "/b/train_*.bin"


def _readme_commands(section: str) -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "bytegolf":
                commands.append(words[1:])
    return commands


def test_readme_bring_your_own_commands_compose() -> None:
    commands = _readme_commands("Bring your own checkpoint, data and model")
    assert [c[0] for c in commands] == ["run", "run", "train", "run"]
    for verb, *overrides in commands:
        cli._check_choices(overrides)
        cli._check_groups(verb, cli.TASKS[verb][0], overrides)
        resolved = _resolved(_compose(cli.TASKS[verb][0], overrides))
        for ov in overrides:  # every value the command gives is in the config it runs with
            key, _, value = ov.partition("=")
            if (CONFIG_DIR / key).is_dir():  # a group choice (data=parameter_golf)
                continue
            node: Any = resolved
            for part in key.split("."):
                node = node[part]
            assert str(node).lower() == value.lower(), f"bytegolf {verb}: {key} is {node!r}, given {value!r}"
    pg = _resolved(_compose("run", commands[0][1:]))["data"]
    assert pg["train"] == "/path/datasets/fineweb10B_sp1024/fineweb_train_*.bin"
