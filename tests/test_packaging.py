"""The package as users install it: the wheel holds every module and every data file the code loads (the
packaged recipes), declares the CLI, and carries the one version number that ``__version__`` reports.

CI builds the wheel with ``python -m build`` and passes it in ``UDA_PERTURB_WHEEL``; elsewhere the test builds
one from the source tree (``pip wheel --no-build-isolation``, seconds, nothing downloaded)."""
import configparser
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import uda_perturb
from uda_perturb.config import PACKAGED, list_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    given = os.environ.get("UDA_PERTURB_WHEEL")
    if given:
        return zipfile.ZipFile(given)
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("not a source tree: no setup.cfg to build a wheel from")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True)
    return zipfile.ZipFile(next(out.glob("uda_perturb-*.whl")))


def _source_files() -> set[str]:
    pkg = ROOT / "uda_perturb"
    return {p.relative_to(ROOT).as_posix() for p in pkg.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_wheel_holds_every_module_and_data_file_of_the_package(wheel):
    names = set(wheel.namelist())
    missing = sorted(_source_files() - names)
    assert not missing, f"missing from the wheel: {missing}"
    recipes = {f"uda_perturb/configs/{r}.yaml" for r in list_recipes()}
    assert recipes and recipes <= names and len(recipes) == len(list(PACKAGED.glob("*.yaml")))


def test_wheel_declares_the_cli_and_the_setup_cfg_version(wheel):
    dist = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    entry = wheel.read(f"{dist}/entry_points.txt").decode()
    assert "uda-perturb = uda_perturb.cli:main" in entry
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    version = cfg["metadata"]["version"]
    assert f"Version: {version}\n" in wheel.read(f"{dist}/METADATA").decode()
    assert uda_perturb.__version__ == metadata.version("uda_perturb") == version


def test_metadata_is_declared_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "[project]" not in pyproject and "\nversion =" not in pyproject and "\nname =" not in pyproject
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] not in (ROOT / "uda_perturb" / "__init__.py").read_text()
