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
