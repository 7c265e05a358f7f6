"""The package's layers point one way (data -> model -> train -> sweep), imports sit at the top of modules
(only the documented optional heavy dependencies are imported where used), and no private Lightning or
torchmetrics API is used."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mdpl"
LAYERS = ("data", "model", "train", "sweep")  # each may import those before it, never those after
# imports inside functions, each an optional heavy dependency that only some runs need
OPTIONAL_IMPORTS = {("data/tokenizers.py", "open_clip.tokenizer"), ("sweep/outputs.py", "matplotlib"),
                    ("sweep/outputs.py", "matplotlib.figure")}  # fmt: skip


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at top level) of every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in top))
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_no_later_layer(layer):
    later = LAYERS[LAYERS.index(layer) + 1 :]
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module, _ in _imports(path):
            bad = [m for m in later if module == f"mdpl.{m}" or module.startswith(f"mdpl.{m}.")]
            assert not bad, f"{path.relative_to(PACKAGE)} imports {module} (layer {layer} is below {bad[0]})"


def test_imports_inside_functions_are_the_documented_optional_ones():
    inside = {(str(p.relative_to(PACKAGE)), m) for p in PACKAGE.rglob("*.py") for m, top in _imports(p) if not top}
    assert inside == OPTIONAL_IMPORTS
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "PLC0415", "--output-format", "concise",
                           "mdpl"], cwd=PACKAGE.parent, capture_output=True, text=True)  # fmt: skip
    flagged = {line.split(":")[0].removeprefix("mdpl/") for line in ruff.stdout.splitlines() if "PLC0415" in line}
    assert flagged == {f for f, _ in OPTIONAL_IMPORTS}


def test_no_private_lightning_or_torchmetrics_api():
    private = re.compile(r"_save_none_monitor_checkpoint|_check_log_dir_exists|MDPL_RUN_VERSION|_update_count|"
                         r"inline_module|frozen_cast|fit_loop|batch_progress|_computed")  # fmt: skip
    for path in PACKAGE.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            assert not private.search(line), f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
