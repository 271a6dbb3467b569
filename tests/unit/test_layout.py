"""Repository layout: the repo's ``mlflow/`` store never shadows the mlflow package,
and ``app/`` stays Ray-free (ARCHITECTURE.md, invariant 5)."""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DIR = REPO_ROOT / "mlflow"
APP_DIR = REPO_ROOT / "app"

_PYTHON_SUFFIXES = {".py", ".pyc", ".pyi", ".pyd", ".so"}


# -- helpers (each has its own test below, so the layout checks cannot pass vacuously) --


def _python_files(folder: Path, *, skip: set[str]) -> list[Path]:
    """Python sources or anything named ``__init__`` under ``folder``, not descending
    into the top-level subfolders named in ``skip``."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix in _PYTHON_SUFFIXES or path.stem == "__init__":
                found.append(path)
    return found


def _is_ray(module: str) -> bool:
    return module == "ray" or module.startswith("ray.")


def _ray_imports(source: str) -> list[int]:
    """Line numbers of every import of ``ray`` (or a submodule) in ``source``."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(_is_ray(alias.name) for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _is_ray(node.module):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                name in {"import_module", "__import__"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _is_ray(node.args[0].value)
            ):
                lines.append(node.lineno)
    return lines


def _app_sources() -> list[Path]:
    return sorted(APP_DIR.rglob("*.py"))


# -- mlflow resolves into site-packages ---------------------------------------------


def test_import_mlflow_resolves_into_site_packages() -> None:
    import mlflow

    path = Path(mlflow.__file__).resolve()
    assert "site-packages" in path.parts
    assert not path.is_relative_to(MLFLOW_DIR.resolve())


def test_mlflow_resolves_into_site_packages_with_repo_root_first_on_path() -> None:
    # The exact lookup `import mlflow` does for a top-level name, with the repo root
    # ahead of everything else (as when a script or `python -m pytest` runs from it).
    spec = importlib.machinery.PathFinder.find_spec("mlflow", [str(REPO_ROOT), *sys.path])
    assert spec is not None
    # A namespace package (a bare mlflow/ folder winning) has no origin.
    assert spec.origin is not None, f"mlflow resolved to a namespace package: {spec}"
    origin = Path(spec.origin).resolve()
    assert "site-packages" in origin.parts
    assert not origin.is_relative_to(MLFLOW_DIR.resolve())


def test_mlflow_resolves_into_site_packages_from_a_process_started_in_the_repo_root() -> None:
    # `python -c` puts the working directory first on sys.path.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONSAFEPATH", "PYTHONPATH"}}
    code = (
        "import importlib.util, json, os, sys; "
        "spec = importlib.util.find_spec('mlflow'); "
        "print(json.dumps({'path0': os.path.abspath(sys.path[0]), 'origin': spec.origin}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(proc.stdout)
    assert Path(found["path0"]).resolve() == REPO_ROOT
    assert found["origin"] is not None
    origin = Path(found["origin"]).resolve()
    assert "site-packages" in origin.parts
    assert not origin.is_relative_to(MLFLOW_DIR.resolve())


def test_repo_mlflow_folder_holds_no_python() -> None:
    assert MLFLOW_DIR.is_dir()
    offenders = _python_files(MLFLOW_DIR, skip={"artifacts"})
    assert offenders == [], f"python files in the repo's mlflow/ store: {offenders}"


def test_python_file_finder_sees_init_and_modules_but_skips_artifacts(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("data")
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "shadow.py").write_text("")
    (tmp_path / "artifacts" / "1").mkdir(parents=True)
    (tmp_path / "artifacts" / "1" / "python_model.py").write_text("")
    found = {
        p.relative_to(tmp_path).as_posix() for p in _python_files(tmp_path, skip={"artifacts"})
    }
    assert found == {"__init__.py", "sub/shadow.py"}


# -- app/ is Ray-free ----------------------------------------------------------------


def test_no_module_under_app_imports_ray() -> None:
    sources = _app_sources()
    names = {p.name for p in sources}
    # Guard against scanning the wrong folder (an empty scan would pass vacuously).
    assert {"__init__.py", "http.py", "dataplane.py", "routing.py", "validation.py"} <= names
    offenders = {
        str(p.relative_to(REPO_ROOT)): lines
        for p in sources
        if (lines := _ray_imports(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"app/ must not import ray: {offenders}"


@pytest.mark.parametrize(
    "source",
    [
        "import ray",
        "import ray.serve",
        "import os, ray as r",
        "from ray import serve",
        "from ray.serve.schema import ServeDeploySchema",
        "def f():\n    from ray.serve import handle\n",
        "import importlib\nimportlib.import_module('ray.serve')",
        "__import__('ray')",
    ],
)
def test_ray_import_scanner_finds_ray_imports(source: str) -> None:
    assert _ray_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import rayon",
        "from raytrace import ray",
        "from app import ray_free",
        "from . import ray",
        "x = 'import ray'",
    ],
)
def test_ray_import_scanner_ignores_other_names(source: str) -> None:
    assert _ray_imports(source) == []


def test_importing_every_app_module_loads_no_ray() -> None:
    # Catches transitive imports too (an app module importing deployments/, which uses ray).
    modules = sorted(
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _app_sources()
        # Alembic's scripts run inside Alembic only (they need its migration context).
        if "migrations" not in p.parts
    )
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
