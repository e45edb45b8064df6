"""A study's runs: the warm starts and every (method, augmentation arm, seed) adaptation, each a
:class:`~uda_perturb.bench.runner.Run` with its overrides and folder. Folders are named from the labels
(``<work>/<folder>/<method>_<arm>_s<seed>``, ``pretrain_<arm>[_s<seed>]``) and a finished run is reused only
when its fingerprint (resolved config, start weights' content) is this run's: two studies that declare the
same run train it once."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..bench.runner import Run, photometric
from ..errors import ConfigError
from .spec import Study

QUICK_WARM_ITERS, QUICK_ITERS = 20, 10


def arm_name(on: bool) -> str:
    """Folder-name part of a photometric augmentation arm."""
    return "aug" if on else "plain"


@dataclass
class Plan:
    """A study resolved for one invocation: where its runs live, which seeds and methods it runs, the extra
    overrides of every run (``--set``), and ``quick`` (a smoke test: 20 + 10 iterations, its own folder)."""

    study: Study
    work: Path
    seeds: Sequence[int]
    methods: Sequence[str]
    extra: Sequence[str] = ()
    quick: bool = False

    @property
    def warm_iters(self) -> int:
        """Iterations of each warm start."""
        return QUICK_WARM_ITERS if self.quick else self.study.warm_start.iters if self.study.warm_start else 0

    @property
    def iters(self) -> int:
        """Iterations each adaptation run trains (``stop_at`` when set)."""
        return QUICK_ITERS if self.quick else self.study.adaptation.stop_at or self.study.adaptation.iters

    def iters_of(self, run: Run) -> int:
        """Iterations ``run`` trains: a warm start's or an adaptation run's."""
        return self.warm_iters if run.label.startswith("warm start") else self.iters

    def common(self) -> list[str]:
        """Overrides of every run: a checkpoint every 50 iterations (a run cut off continues from it), no
        evaluation during training, the study's overrides, then ``--set``."""
        out = ["data.num_workers=0", "train.checkpoint_every=50", "train.eval_every=0", *self.study.overrides,
               *self.extra]
        return out + list(self.study.quick_overrides) if self.quick else out

    def _run(self, label: str, overrides: list[str], folder: str, seed: int) -> Run:
        return Run(label, overrides, self.work / folder, seed, tuple(self.study.imports))

    def warm_start(self, on: bool, seed: int) -> Optional[Run]:
        """The source-only warm start of one augmentation arm and seed (``None`` for a study without one)."""
        w = self.study.warm_start
        if w is None:
            return None
        lr = [f"train.lr={w.lr}"] if w.lr is not None else []
        return self._run(f"warm start{' +aug' if on else ''}",
                         self.common() + photometric(on) + ["method.name=source_only", f"train.iters={self.warm_iters}",
                                                            *lr, f"data.batch_size={w.batch}"],
                         f"pretrain_{arm_name(on)}" + ("" if w.shared else f"_s{seed}"), seed)

    def warm_starts(self) -> list[Run]:
        """Every warm start the adaptation runs need (one per arm when shared)."""
        seeds = self.seeds[:1] if self.study.warm_start and self.study.warm_start.shared else self.seeds
        return [r for on in self.study.augmentation for s in seeds if (r := self.warm_start(on, s)) is not None]

    def adaptation(self, method: str, on: bool, seed: int) -> Run:
        """The run of ``method`` (a label of the study) from the warm start of ``(on, seed)``."""
        warm, a = self.warm_start(on, seed), self.study.adaptation
        after = [f"model.weights={warm.run_dir / 'segmentor.pt'}"] if warm else []
        after += [f"train.iters={QUICK_ITERS if self.quick else a.iters}"]
        after += [f"train.stop_at={a.stop_at}"] if a.stop_at and not self.quick else []
        after += [f"train.lr={a.lr}"] if a.lr is not None else []
        after += [f"data.batch_size={a.batch}"] if a.batch is not None else []
        folder = re.sub(r"[^A-Za-z0-9_.]+", "_", method) + f"_{arm_name(on)}_s{seed}"
        return self._run(method + (" +aug" if on else ""),
                         self.common() + photometric(on) + self.study.methods[method] + after, folder, seed)

    def adaptations(self) -> list[Run]:
        """Every adaptation run, seed by seed (a study longer than one sitting has whole seeds as it goes)."""
        return [self.adaptation(m, on, s) for s in self.seeds for on in self.study.augmentation for m in self.methods]

    def runs(self) -> list[Run]:
        """Warm starts first, then the adaptation runs (each waits for its own warm start only)."""
        return self.warm_starts() + self.adaptations()


def make_plan(study: Study, work_dir: str | Path = "runs/studies", seeds: Optional[Sequence[int]] = None,
              methods: Optional[Sequence[str]] = None, extra: Sequence[str] = (), quick: bool = False) -> Plan:
    """Resolve a study for one invocation (``methods``/``seeds``: a subset; ``quick``: first seed, 20 + 10
    iterations, in ``<folder>_quick``)."""
    unknown = [m for m in methods or () if m not in study.methods]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(study.methods), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"study {study.name} has no method {unknown[0]!r}{hint}; it has: {', '.join(study.methods)}")
    seeds = list(seeds or study.seeds)
    folder = (study.folder or study.name) + ("_quick" if quick else "")
    return Plan(study, Path(work_dir) / folder, seeds[:1] if quick else seeds, list(methods or study.methods),
                list(extra), quick)


def check_runs(study: Study) -> None:
    """Every run's recipe with its overrides validates (names, keys, option values), the evaluation names
    recipe splits, and every pair names two methods (labels with or without the arm suffix)."""
    from ..config import load_config

    plan = make_plan(study, seeds=study.seeds[:1])
    for run in plan.warm_starts()[:1] + [plan.adaptation(m, study.augmentation[0], plan.seeds[0])
                                         for m in study.methods]:
        try:
            cfg = load_config(study.recipe, run.overrides)
        except ConfigError as exc:
            raise ConfigError(f"study {study.name}, {run.label}: {exc}") from None
    e = study.evaluation
    for split in [e.target, e.source, *e.extra]:
        if split is not None and split not in cfg.data.eval:
            raise ConfigError(f"study {study.name}: evaluation split {split!r} is not among the recipe's data.eval "
                              f"({', '.join(cfg.data.eval)})")
    for a, b in study.all_pairs():
        for m in (a, b):
            if m not in study.methods:
                raise ConfigError(f"study {study.name}: pair '{a} - {b}' names {m!r}, not one of its methods")


def missing_paths(plan: Plan) -> list[str]:
    """Data roots and start weights that the runs read and this machine lacks (warm starts' weights are made
    by the study itself), each as ``key: path``."""
    from ..config import load_config
    from ..option_check import dataset_entries

    made = {str(w.run_dir / "segmentor.pt") for w in plan.warm_starts()}
    out: set[str] = set()
    for run in plan.runs():
        cfg = load_config(plan.study.recipe, run.overrides)
        out |= {f"{k}.root: {d.root}" for k, d in dataset_entries(cfg) if d.root and not Path(d.root).exists()}
        w = cfg.model.weights
        if w and w not in made and not Path(w).exists():
            out.add(f"model.weights: {w}")
    return sorted(out)
