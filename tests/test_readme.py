"""The README's examples are the files in examples/, and they conform."""

from __future__ import annotations

from pathlib import Path

import pytest

import teachsim
from teachsim import registry

ROOT = Path(__file__).resolve().parents[1]


def _code(path: Path) -> str:
    text = path.read_text()
    return text[text.index("import "):]   # the docstring aside, the README shows the whole file


@pytest.mark.parametrize("name", ["my_protocol.py", "my_task.py"])
def test_readme_shows_the_example_files(name):
    assert _code(ROOT / "examples" / name) in (ROOT / "README.md").read_text()


def test_examples_conform():
    with registry.scoped():
        registry.load_plugin(str(ROOT / "examples" / "my_protocol.py"))
        registry.load_plugin(str(ROOT / "examples" / "my_task.py"))
        assert teachsim.check_task("halfspace", params={"dim": 6}).ok
        report = teachsim.check_protocol("noisy-teacher", params={"flip": 0.3},
                                         task={"name": "halfspace", "dim": 6})
        assert report.ok, report.failures
