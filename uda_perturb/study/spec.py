"""A study file: the comparison a user declares in YAML (recipe, warm start, adaptation, seeds, methods,
evaluation, questions, budget), validated like a recipe: an unknown key or name is one line with "did you mean".
A file may start from another (``base:``, a packaged name or a path); its top-level keys replace the base's."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..bench.answers import Question
from ..config import read_mapping
from ..config_schema import from_dict
from ..errors import ConfigError

PACKAGED = Path(__file__).resolve().parent.parent / "studies"


@dataclass
class WarmStart:
    """The source-only run every adaptation starts from: one per seed (``shared``: the first seed's for all)
    and augmentation arm; ``lr: null`` keeps the recipe's."""

    iters: int = 600
    batch: int = 8
    lr: Optional[float] = None
    shared: bool = False


@dataclass
class Adaptation:
    """Every method's run after the warm start (``lr``/``batch`` null: the recipe's; ``stop_at``: end before
    ``iters``, the schedule's length, as AdaptSegNet's early stop)."""

    iters: int = 500
    stop_at: Optional[int] = None
    lr: Optional[float] = None
    batch: Optional[int] = None


@dataclass
class Evaluation:
    """Which recipe eval splits the report reads: the ``target`` (questions and pairs), the ``source`` domain's
    test split, ``extra`` splits summarised beside them, and the recipe's class ``groups``."""

    target: str = "target_test"
    source: Optional[str] = None
    extra: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


@dataclass
class Slurm:
    """Defaults of the slurm launcher (flags override them); ``additional``: any other sbatch option."""

    partition: Optional[str] = None
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: Optional[int] = None
    timeout_min: int = 24 * 60
    array_parallelism: int = 64
    additional: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """A whole study. ``name``: its results' file stem; ``folder``: its run folder under the work folder
    (default ``name``: two studies naming one folder share their identical runs); ``methods``: label ->
    recipe overrides; ``augmentation``: the photometric arms (``[false]``, ``[true]`` or both); ``pairs``:
    ``"a - b"`` paired differences reported (the questions' pairs are added); ``select``: report the label-free
    choice (best ``source`` mIoU, ties within ``select`` points broken by the lowest target entropy);
    ``imports``: modules that register a user's methods, add-ons or datasets, imported here and by every run."""

    name: str
    recipe: str
    methods: dict[str, list[str]]
    folder: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    quick_overrides: list[str] = field(default_factory=list)
    warm_start: Optional[WarmStart] = field(default_factory=WarmStart)
    adaptation: Adaptation = field(default_factory=Adaptation)
    augmentation: list[bool] = field(default_factory=lambda: [False])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    evaluation: Evaluation = field(default_factory=Evaluation)
    pairs: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    select: Optional[float] = None
    gap_record: Optional[str] = None
    cost_record: Optional[str] = None
    budget_hours: Optional[float] = None
    imports: list[str] = field(default_factory=list)
    slurm: Slurm = field(default_factory=Slurm)
    path: Optional[str] = None

    def all_pairs(self) -> list[tuple[str, str]]:
        """Every paired difference the report shows: ``pairs``, then the questions' pairs not among them."""
        names = self.pairs + [q.pair for q in self.questions if q.pair not in self.pairs]
        for p in (p for p in names if " - " not in p):
            raise ConfigError(f"study {self.name}: pair {p!r} must read 'a - b'")
        return [(a.strip(), b.strip()) for a, b in (p.split(" - ", 1) for p in names)]


def study_path(name: str | Path) -> Path:
    """A study file: an existing path or a packaged study's name (``uda-perturb list`` shows them)."""
    for c in (Path(name), PACKAGED / f"{Path(name).name}.yaml", PACKAGED / Path(name).name):
        if c.is_file():
            return c
    avail = packaged_studies()
    close = difflib.get_close_matches(Path(name).stem, avail, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"study {name!r} not found.{hint} Packaged studies: {', '.join(avail)}")


def packaged_studies() -> list[str]:
    """Names of the studies shipped with the package."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def raw_study(name: str | Path, seen: tuple = ()) -> dict:
    """A study file's mapping with its ``base:`` applied (the file's top-level keys replace the base's)."""
    path = study_path(name)
    if path.resolve() in seen:
        raise ConfigError(f"study {path} includes itself through 'base:'")
    data = read_mapping(path, "study")
    base = data.pop("base", None)
    merged = raw_study(base if Path(base).is_absolute() or not (path.parent / base).is_file()
                       else path.parent / base, (*seen, path.resolve())) if base else {}
    merged.pop("path", None)
    return {**merged, "name": path.stem, **data, "path": str(path)}


def load_study(name: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read and validate a study: its keys, its user modules imported, and every method's recipe with its
    overrides (a method or add-on name that is not registered fails here, before any run, naming the closest)."""
    from ..config import apply_overrides

    study = from_dict(Study, apply_overrides(raw_study(name), overrides or []))
    if not study.methods:
        raise ConfigError(f"study {study.name}: 'methods' is empty")
    for module in study.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"study {study.name}: imports: cannot import {module!r} ({exc})") from None
    from .plan import check_runs

    check_runs(study)
    return study
