"""`bytegolf list`: every registered format and codec, the presets and the default compare's systems."""

from __future__ import annotations

import subprocess
import sys


def test_list_names_every_registered_format_and_codec() -> None:
    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS
    from bytegolf.tools.catalog import catalog

    formats = {name: what for name, what, _ in catalog("formats")}
    assert set(formats) == set(FORMATS) and all(formats.values())  # every one described
    assert set(CODECS) <= {name for name, _, _ in catalog("codecs")}
    systems = {name for name, _, _ in catalog("systems")}
    assert {"pg_baseline", "pg_record", "pg_top", "scalar_gptq", "alloc_gptq"} <= systems
    done = subprocess.run([sys.executable, "-m", "bytegolf.cli", "list", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bytegolf list formats|codecs|presets|systems" in done.stderr


def test_verb_help_lists_choices_and_keys_with_their_comments_and_no_internal_schemas() -> None:
    done = subprocess.run([sys.executable, "-m", "bytegolf.cli", "run", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "base_" not in out and "format={additive, basis_delta, clustered" in out and "scalar*" in out
    assert "eval.windows = " in out and "format.clip_k = None   # SDClip multiple" in out
    done = subprocess.run([sys.executable, "-m", "bytegolf.cli", "compare", "--help"], capture_output=True, text=True)
    assert "compare.budgets = [16000000.0, 4000000.0, 3000000.0, 2000000.0]   # bytes" in done.stdout
