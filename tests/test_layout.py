"""The package's layers and the direction of its imports.

Folders are layers; a module may import from its own package and from lower layers only,
lazy imports inside functions included (a lazy import up a layer is still a loop, only
hidden). Built-ins named in the registry as ``"module:attr"`` strings are not imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from teachsim import registry

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

LAYERS = [
    {"errors", "seeding", "messages", "version"},   # foundation
    {"schema"},
    {"registry"},
    {"attacks"},
    {"tasks"},
    {"agents"},
    {"protocols"},
    {"platform"},                     # the engine: specs, build, loop, episode, judge
    {"config"},
    {"runners"},
    {"analysis"},                     # interactions and the findings: the reader profiles runs with them
    {"results", "checks", "pettingzoo"},
    {"cli"},
    {"__main__", "__init__"},        # ``python -m teachsim`` and the facade
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``teachsim.platform.judge`` -> ``platform``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "teachsim").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every teachsim module ``module`` imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("teachsim")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("teachsim"):
                continue
            # ``from teachsim import messages`` imports the module teachsim.messages
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or {target}
    return found


def test_imports_point_down_the_layers():
    modules = _modules()
    assert {_unit(m) for m in modules} <= set(LAYER), "a new top-level module needs a layer here"
    upward = []
    for module, path in modules.items():
        for target in _imports(module, path, set(modules)):
            assert target in modules, f"{module} imports {target}, which does not exist"
            a, b = _unit(module), _unit(target)
            if a != b and LAYER[b] >= LAYER[a]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up (or across) a layer:\n" + "\n".join(upward)


def test_the_check_itself_sees_an_upward_import(tmp_path):
    """The checker is not blind: a lazy import up a layer is reported."""
    fake = tmp_path / "teachsim" / "tasks"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from ..platform import judge\n")
    found = _imports("teachsim.tasks.x", fake / "x.py", {"teachsim.platform.judge"})
    assert found == {"teachsim.platform.judge"}
    assert LAYER[_unit("teachsim.platform.judge")] > LAYER[_unit("teachsim.tasks.x")]


@pytest.mark.parametrize("module", ["teachsim", "teachsim.config", "teachsim.cli"])
def test_reading_configs_never_imports_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'pandas', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_checking_every_builtin_suite_imports_no_torch_and_trains_nothing():
    code = ("import sys; from pathlib import Path; from teachsim import config\n"
            "import teachsim.suites as s\n"
            "for p in sorted(Path(s.__path__[0]).glob('*.toml')): config.load(p)\n"
            "print(sorted(m for m in ('torch', 'pandas', 'ray', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("kind", sorted(registry.REGISTRIES))
def test_builtin_parameter_tables_registered_torch_free_are_the_implementations_own(kind):
    # tasks and methods register their tables by "module:attr" (torch-free modules): the
    # strings must name the very table the implementation reads
    for name, entry in registry.REGISTRIES[kind].entries().items():
        if isinstance(entry.declared, str):
            assert entry.params == dict(getattr(entry.factory, "PARAMS", {})), (kind, name)


def _used_attributes(path: Path, side: str) -> set[str]:
    """Attributes a protocol module reads of its ``student``/``teacher`` argument."""
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == side}


PROTOCOL_FILES = sorted((SRC / "teachsim" / "protocols").glob("*.py")) + [ROOT / "examples" / "my_protocol.py",
                                                                      ROOT / "examples" / "show_and_correct.py"]


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.name)
def test_protocols_use_only_the_declared_sides(path):
    from teachsim.protocols.base import StudentSide, TeacherSide

    for side, contract in (("student", StudentSide), ("teacher", TeacherSide)):
        declared = {n for n in dir(contract) if not n.startswith("_")} | set(contract.__annotations__)
        extra = _used_attributes(path, side) - declared
        assert not extra, f"{path.name} uses {side}.{sorted(extra)}, which {contract.__name__} does not declare"


def test_the_agents_implement_the_sides():
    import torch

    from teachsim.agents.methods import erm
    from teachsim.agents.student import Student
    from teachsim.agents.teacher import Teacher
    from teachsim.protocols.base import StudentSide, TeacherSide
    from teachsim.tasks.hidden_feature import HiddenFeature

    task = HiddenFeature(0, dim=4)
    student = Student(torch.nn.Linear(4, 2), erm, task.data, task.classes, seed=0)
    assert isinstance(student, StudentSide) and isinstance(Teacher(task), TeacherSide)
    assert not isinstance(Teacher(task), StudentSide)   # the check can fail


def test_the_tests_mirror_the_package():
    """A test folder is named after the package folder it tests; tests of the whole
    (command line, configs, README, science) sit at the top of tests/."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    packages = {p.name for p in (SRC / "teachsim").iterdir() if (p / "__init__.py").exists()}
    assert folders, "tests/ has no sub-folders"
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    for folder in folders:
        assert list((tests / folder).glob("test_*.py")), f"tests/{folder} holds no tests"


# Paths a user's clone does not have: the team's working notes live beside the repository.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.])shared/(research|seeds)|\b(SPEC|DESIGN)\.md|SPEC section|"
                     r"research/(papers|ecosystem|style)\.md|/work/")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):   # not a git checkout: every file but the venv
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]


def test_no_file_names_a_path_outside_the_repository():
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for n, line in enumerate(text.splitlines(), 1)
                  if OUTSIDE.search(line) and path.name != "test_layout.py"]
    assert not found, "\n".join(found)


def test_the_outside_path_check_sees_one():
    assert OUTSIDE.search("see ../shared/SPEC.md section 3") and OUTSIDE.search("research/papers.md 4.2")
    assert not OUTSIDE.search("docs/science.md and examples/shared_helpers.py")
