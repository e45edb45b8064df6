"""Benchmarks, in one place: the run launcher (:mod:`.runner`), the report writer (:mod:`.report`), the
comparison protocol (:mod:`.setups`) and each benchmark (:mod:`.compare`, :mod:`.ablate`, :mod:`.speed`,
:mod:`.perturb_overhead`, :mod:`.setup_search`, :mod:`.demo_results`). ``benchmarks/*.py`` are thin entry
points that write under ``benchmarks/results/``; ``uda-perturb bench`` runs the comparison."""
from __future__ import annotations

from typing import Optional, Sequence

from .report import aggregate, mean_std, per_class_table, select_variant, summary_table, write_results
from .runner import Run, launch, photometric, run_all
from .setups import METHODS, SETUPS, Protocol

__all__ = ["METHODS", "SETUPS", "Protocol", "Run", "aggregate", "launch", "main", "mean_std", "per_class_table",
           "photometric", "run_all", "select_variant", "summary_table", "write_results"]


def main(argv: Optional[Sequence[str]] = None, prog: str = "compare") -> int:
    """``uda-perturb bench ...``: the comparison (:func:`uda_perturb.bench.compare.main`)."""
    from .compare import main as compare_main

    return compare_main(argv, prog=prog)
