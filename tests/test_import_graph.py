"""scripts/check_imports.py: the package passes, and it catches cycles and upward imports."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "check_imports.py")


def _script():
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_alignjax_has_no_cycle_and_no_upward_import():
    out = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no cycles, no upward imports" in out.stdout


def _package(root, files: dict[str, str]) -> str:
    for rel, text in {"alignjax/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(root / "alignjax")


def test_cycles_through_function_level_and_relative_imports_are_found(tmp_path):
    root = _package(tmp_path, {
        "alignjax/data/__init__.py": "",
        "alignjax/data/records.py": "",
        "alignjax/data/readers.py": """
            def read():
                from alignjax.data import formats  # function level
            """,
        "alignjax/data/formats.py": "from .readers import read\n",  # relative
    })
    graph, problems = _script().check(root)
    assert graph["alignjax.data.readers"] == {"alignjax.data.formats"}
    assert graph["alignjax.data.formats"] == {"alignjax.data.readers"}
    assert any(p.startswith("import cycle: alignjax.data.formats -> alignjax.data.readers")
               for p in problems), problems
    assert any("within alignjax.data: alignjax.data.readers imports alignjax.data.formats" in p
               for p in problems), problems


def test_upward_unknown_and_missing_modules_fail(tmp_path):
    root = _package(tmp_path, {
        "alignjax/models/__init__.py": "",
        "alignjax/models/config.py": "import alignjax.train\n",
        "alignjax/train.py": "from alignjax.models import config\n",
        "alignjax/helpers.py": "from alignjax import quickstart_data\n",
    })
    _, problems = _script().check(root)
    assert ("upward import: alignjax.models.config (models) imports alignjax.train (runners)"
            in problems), problems
    assert "alignjax.helpers: not in the layer table (add it to LAYERS)" in problems
    assert "alignjax.helpers imports alignjax.quickstart_data, which does not exist" in problems
    assert _script().main(["--root", root]) == 1


def test_modules_not_written_yet_may_be_imported_from_above(tmp_path):
    root = _package(tmp_path, {
        "alignjax/metrics.py": "from alignjax import steps\n",
        "alignjax/steps.py": "",
        "alignjax/rl/__init__.py": "",
        "alignjax/rl/loop.py": "from alignjax import metrics, steps\n",
        "alignjax/train.py": "from alignjax.rl import loop\n",
    })
    _, problems = _script().check(root)
    assert problems == []
