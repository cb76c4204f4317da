"""The compare's shipped knob paths (compare.knobs.<format>.name) move each format's bytes monotonically."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import bytegolf.run.sweep  # noqa: F401  (the ${repo:} resolver)
from bytegolf import settings
from bytegolf.errors import ConfigError
from bytegolf.search import allocate
from bytegolf.search import budget as search
from bytegolf.search.prober import Encoder, Workspace
from bytegolf.study import systems
from tests.integration.test_run import TINY_ARGS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments"


def _cfg(overrides: list[str]):
    settings.register()
    systems.register()
    allocate.register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("compare", overrides=overrides)


def test_dotted_settings_read_and_replace_one_nested_value() -> None:
    params = {"fraction": 0.01, "base": {"bits": 4, "clip_k": 4.0}}
    assert search.setting(params, "base.clip_k") == 4.0 and search.setting(params, "fraction") == 0.01
    assert search.setting(params, "base.nope") is None and search.setting(params, "fraction.x") is None
    moved = search.with_setting(params, "base.clip_k", 9.0)
    assert moved == {"fraction": 0.01, "base": {"bits": 4, "clip_k": 9.0}}
    assert params["base"]["clip_k"] == 4.0  # the input is untouched
    with pytest.raises(ConfigError, match="fraction is not a nested setting"):
        search.with_setting(params, "fraction.x", 1)
    knob = search.knob_for("base.clip_k", 4.0)
    assert (knob.name, knob.lo, knob.hi) == ("base.clip_k", 3.0, 256.0)  # ranged as clip_k


def test_a_knob_name_the_format_lacks_is_refused() -> None:
    cfg = _cfg(["compare.formats=[sparse_outlier]", "compare.references=[]", "compare.allocated=null",
                "compare.knobs.sparse_outlier.name=base.nope"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"sparse_outlier\.name: sparse_outlier has no setting 'base\.nope'"):
        systems.systems(cfg)


def test_shipped_knob_paths_are_monotone_in_bytes(tiny_bundle: Path, tmp_path: Path) -> None:
    """Every format of the default compare, on its shipped knob or path: clips fall in bytes as they widen,
    codebook sizes and numbers of codebooks rise."""
    cfg = _cfg([f"bundle={tiny_bundle}", *TINY_ARGS, "compare.references=[]", "compare.allocated=null",
                "compare.params.basis_delta.rank=2", "+compare.params.additive.max_rounds=1",
                "+compare.params.clustered.iters=3"])  # fmt: skip
    built, probe_codec = systems.systems(cfg)
    knobs = {s.label: s.knob.name for s in built}
    assert knobs == {
        "scalar": "clip_k",
        "scalar_gptq": "clip_k",
        "clustered": "codebook_size",
        "additive": "num_codebooks",
        "sparse_outlier": "base.clip_k",
        "basis_delta": "residual.clip_k",
        "hqq": "bits",
    }
    ws = Workspace(cfg)
    paths = {"clustered": [2, 4, 8, 16, 32], "additive": [1.0, 1.3, 1.7, 2.0, 3.0], "hqq": [1, 2, 3, 4, 6]}
    for s in built:
        enc = Encoder(ws, s.fmt, s.params, s.knob, *probe_codec, tmp_path, plan_at=s.plan_config, layout_cfg=s.layout)
        values = paths.get(s.label, list(np.geomspace(s.knob.lo, 60.0, 5)))
        sizes = [enc(float(v)).final_bytes for v in values]
        if s.label not in paths:  # clips: the widest stores the fewest bytes
            sizes = sizes[::-1]
        assert all(a < b for a, b in itertools.pairwise(sizes)), (s.label, sizes)
        assert sizes[0] < 0.6 * sizes[-1], (s.label, sizes)  # the path spans a wide range of bytes
