"""Benchmarks, in one place: the run launcher (:mod:`.runner`), the report helpers (:mod:`.report`) and each
benchmark (:mod:`.compare`, :mod:`.speed`, :mod:`.perturb_overhead`, :mod:`.curve`, ...). Comparisons and
ablations are studies (:mod:`uda_perturb.study`); ``benchmarks/*.py`` are thin entry points that write under
``benchmarks/results/``."""
from __future__ import annotations

from .report import aggregate, mean_std, per_class_table, select_variant, summary_table, write_results
from .runner import Run, launch, photometric, run_all

__all__ = ["Run", "aggregate", "launch", "mean_std", "per_class_table", "photometric", "run_all", "select_variant",
           "summary_table", "write_results"]
