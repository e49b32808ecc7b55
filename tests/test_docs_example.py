"""The worked example of docs/extending.md runs as written, and docs/presets.md matches the registry.

The example's code blocks are read from the page itself and executed in order (in a temporary
working directory, so its ``runs/`` folder goes there), so the page cannot drift from what genlab
accepts. Its models are registered under their own names and removed afterwards.
"""
from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = ROOT / "docs" / "extending.md"


def python_blocks(path: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture
def registry_restored():
    """Leave MODELS and PRESETS as they were: the example registers tiny-vae and tiny-vae-wide."""
    from genlab.models import MODELS, PRESETS

    models, presets = dict(MODELS), dict(PRESETS)
    yield
    MODELS.clear(), MODELS.update(models)
    PRESETS.clear(), PRESETS.update(presets)


def test_extending_example_trains_loads_and_samples(tmp_path, monkeypatch, registry_restored):
    blocks = python_blocks(EXTENDING)
    assert len(blocks) == 2, "docs/extending.md: the test expects the definition block and the usage block"
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_extending_example")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks:
        exec(compile(block, str(EXTENDING), "exec"), module.__dict__)  # noqa: S102 - the page's own code
    namespace = module.__dict__

    run = tmp_path / "runs" / "tiny-vae-digits"
    assert (run / "config.json").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    elbos = [float(m.group(1)) for m in re.finditer(r'"test_elbo": (-?[0-9.e+-]+)', "\n".join(lines))]
    assert len(elbos) == 5, "one held-out ELBO per epoch of the example's 5"
    assert elbos[-1] > elbos[0], f"the example VAE did not learn: test ELBO {elbos}"
    images = namespace["images"]
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_presets_doc_is_generated_from_the_registry():
    """docs/presets.md is what scripts/gen_presets_doc.py writes from genlab.models.PRESETS / MODELS now:
    after changing a preset, run `python scripts/gen_presets_doc.py`."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_presets_doc.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
