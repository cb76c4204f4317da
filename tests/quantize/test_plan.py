"""The tensor plan: Parameter Golf's passthrough rule and name-pattern rules."""

from __future__ import annotations

import pytest

from bytegolf.errors import ConfigError
from bytegolf.model.gpt import GPT, ModelConfig
from bytegolf.quantize.plan import PlanConfig, Rule, make_plan


def _plan(cfg: PlanConfig) -> dict:
    sd = GPT(ModelConfig()).state_dict()
    return {a.name: a for a in make_plan(sd, cfg, "scalar", {"bits": 6})}


def test_default_plan_follows_parameter_golf() -> None:
    plan = _plan(PlanConfig())
    assert plan["blocks.0.attn.c_q.weight"].format == "scalar" and plan["blocks.0.attn.c_q.weight"].params == {
        "bits": 6
    }
    assert plan["tok_emb.weight"].format == "scalar"
    assert plan["blocks.0.attn_scale"].params == {"dtype": "fp32"}  # control tensors stay fp32
    assert plan["skip_weights"].params == {"dtype": "fp32"}
    assert sum(a.format == "scalar" for a in plan.values()) == 9 * 6 + 1


def test_rules_override_and_first_match_wins() -> None:
    cfg = PlanConfig(
        rules=[
            Rule("tok_emb.weight", params={"bits": 8}),
            Rule("blocks.0.mlp.fc.weight", params={"bits": 2}),
            Rule("blocks.*.mlp.*", "passthrough", {"dtype": "bf16"}),
        ]
    )
    plan = _plan(cfg)
    assert plan["tok_emb.weight"].params == {"bits": 8}
    assert plan["blocks.0.mlp.fc.weight"].params == {"bits": 2}
    assert plan["blocks.0.mlp.proj.weight"].format == "passthrough"
    assert plan["blocks.4.attn.c_v.weight"].params == {"bits": 6}


def test_rule_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="match no tensor"):
        _plan(PlanConfig(rules=[Rule("blocks.*.nonexistent")]))


def test_a_rule_naming_another_format_starts_from_that_formats_yaml_defaults() -> None:
    plan = _plan(PlanConfig(rules=[Rule("blocks.*.mlp.*", "clustered", {"codebook_size": 16})]))
    p = plan["blocks.0.mlp.fc.weight"].params
    assert plan["blocks.0.mlp.fc.weight"].format == "clustered"
    assert p["codebook_size"] == 16 and p["dim"] == 4  # dim from experiments/format/clustered.yaml
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        _plan(PlanConfig(rules=[Rule("tok_emb.weight", "nope")]))


def test_merge_settings_merges_inner_format_settings_key_by_key() -> None:
    from bytegolf.quantize.plan import merge_settings

    base = {"fraction": 0.01, "base": {"name": "scalar", "bits": 4, "clip": "sdclip"}}
    assert merge_settings(base, {"base": {"bits": 3}}) == {
        "fraction": 0.01,
        "base": {"name": "scalar", "bits": 3, "clip": "sdclip"},
    }


def test_the_mixed_plan_example_gives_each_family_its_format() -> None:
    from omegaconf import OmegaConf

    from bytegolf.quantize.plan import FORMAT_YAMLS

    node = OmegaConf.load(FORMAT_YAMLS.parent / "plan" / "mixed.yaml")
    plan = _plan(PlanConfig(rules=[Rule(**r) for r in OmegaConf.to_container(node.rules)]))
    assert plan["tok_emb.weight"].params["bits"] == 8 and plan["blocks.3.attn.c_k.weight"].params["bits"] == 6
    mlp = plan["blocks.3.mlp.proj.weight"]
    assert mlp.format == "sparse_outlier" and mlp.params["fraction"] == 0.005
    assert mlp.params["base"] == {**mlp.params["base"], "name": "scalar", "bits": 5, "clip_k": 6.0}
    assert mlp.params["select"] == "hessian"  # the rest from experiments/format/sparse_outlier.yaml


def _pg_top() -> tuple[PlanConfig, dict]:
    """pg_top's plan config and scalar settings as `bytegolf run experiment=pg_top` builds them."""
    from omegaconf import OmegaConf

    from bytegolf.quantize.plan import FORMAT_YAMLS, format_defaults, merge_settings, plan_config

    preset = OmegaConf.load(FORMAT_YAMLS.parent / "experiment" / "pg_top.yaml")
    params = merge_settings(format_defaults("scalar"), OmegaConf.to_container(preset.format))
    return plan_config(preset.plan), params


def test_pg_top_keeps_q_gain_fp16_and_gives_attention_its_clip() -> None:
    cfg, params = _pg_top()
    plan = {a.name: a for a in make_plan(GPT(ModelConfig()).state_dict(), cfg, "scalar", params)}
    gains = [a for n, a in plan.items() if n.endswith(".attn.q_gain")]
    assert len(gains) == 9
    assert all((a.format, a.params) == ("passthrough", {"dtype": "fp16"}) for a in gains)
    for i in range(9):
        for m in ("c_q", "c_k", "c_v", "proj"):
            a = plan[f"blocks.{i}.attn.{m}.weight"]
            assert (a.format, a.params["bits"], a.params["clip_k"], a.params["gptq"]) == ("scalar", 6, 13.0, True)
        for m in ("fc", "proj"):
            assert plan[f"blocks.{i}.mlp.{m}.weight"].params["clip_k"] == 11.5
    assert (plan["tok_emb.weight"].params["bits"], plan["tok_emb.weight"].params["clip_k"]) == (7, 14.0)
    # the record: every float tensor of at most 65,536 elements fp16 (control_patterns: []), the rest int6/int7
    kept = [a for a in plan.values() if a.format == "passthrough"]
    assert len(kept) == 1 + 9 * 4 and all(a.params == {"dtype": "fp16"} for a in kept)
    assert sum(a.format == "scalar" for a in plan.values()) == 9 * 6 + 1


def test_a_broad_glob_takes_small_and_control_tensors_too() -> None:
    """Why pg_top's attention rule names the matrices: a rule takes every float tensor its glob matches."""
    plan = _plan(PlanConfig(rules=[Rule("blocks.*.attn.*", params={"clip_k": 13.0})]))
    assert (plan["blocks.0.attn.q_gain"].format, plan["blocks.0.attn.q_gain"].params) == (
        "scalar",
        {"bits": 6, "clip_k": 13.0},
    )
    plan = _plan(PlanConfig(rules=[Rule("blocks.*.attn.*.weight", params={"clip_k": 13.0})]))
    assert plan["blocks.0.attn.q_gain"].params == {"dtype": "fp32"}  # a control tensor (default patterns)
    assert plan["blocks.0.attn.c_q.weight"].params == {"bits": 6, "clip_k": 13.0}
