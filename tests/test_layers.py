"""The walls between the packages, checked on the source: a core package never reaches
into the shell, and the leaf imports none of the packages (see docs/ARCHITECTURE.md,
"Packages and the walls between them")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the esrec packages it may import (besides itself and third-party code)
ALLOWED = {
    "runtime": set(),
    "towers": {"runtime"},
    "indexer": {"runtime", "towers"},
    "recall": {"runtime", "towers", "indexer"},
    "esrec": {"runtime", "towers", "indexer", "recall"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_layer_allows(package: str) -> None:
    ours = set(ALLOWED)
    wrong = {str(path.relative_to(ROOT)): sorted((_imports(path) & ours) - {package}
                                                 - ALLOWED[package])
             for path in (ROOT / package).rglob("*.py")}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_recall_reaches_only_the_index_layout_the_settings_and_the_canary_store() -> None:
    """Serving recall needs the index's layout and names and the canary's data, not the
    indexer's machinery (sources, pipeline, relay, workers, rollouts)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, recall.recaller, recall.api, recall.events; "
         "print(' '.join(sorted(m for m in sys.modules if m.startswith('indexer.'))))"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert loaded == ["indexer.canary_store", "indexer.layout", "indexer.settings"]


def test_commands_that_load_no_model_never_import_torch() -> None:
    """`esrec indexer status`, `esrec models status` and the like read records and indices:
    importing torch would add 1.5-3 s to each (towers.manifest is the torch-free half of an
    artifact; torch comes with towers.artifact, where the towers are loaded)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, indexer.lifecycle, indexer.service, "
         "towers.registry, towers.manifest, esrec.cli.indexer, esrec.cli.models; "
         "print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "False"
