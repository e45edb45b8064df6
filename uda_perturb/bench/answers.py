"""The questions a comparison was built to answer, each a paired difference with a criterion fixed before the
runs, reported as met / not met as measured (``compare`` writes them for a setup that lists ``questions``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Question:
    """``pair`` (``"a - b"`` as in the paired differences) answers ``text`` when its mIoU difference is at least
    ``min_gain``, more than twice its spread over seeds, and, with ``tail_over_head``, its tail-class gain is at
    least its head-class gain. ``measure_only``: no goal, the difference and whether it exceeds twice its spread
    are reported (a question of "does it matter", either way)."""

    text: str
    pair: str
    min_gain: float = 0.0
    tail_over_head: bool = False
    measure_only: bool = False


def verdict(q: Question, d: Optional[dict[str, Any]]) -> tuple[str, str]:
    """``(measured, verdict)`` cells of one question from its paired differences (``None``: not run)."""
    if d is None:
        return "not run", "not answered"
    m = d["miou"]
    n, mean, std = m["n"], m["mean"], m["std"]
    nan = {"mean": float("nan")}
    tail, head = d.get("miou_tail", nan)["mean"], d.get("miou_head", nan)["mean"]
    measured = f"{mean:+.1f} ± {std:.1f} (n={n})"
    measured += f"; tail {tail:+.1f}, head {head:+.1f}" if "miou_tail" in d else ""
    if n < 2:
        return measured, "needs 2+ seeds"
    beyond = abs(mean) > 2 * std
    if q.measure_only:
        return measured, ("differs (beyond 2 std)" if beyond else "no difference beyond 2 std")
    ok = mean >= q.min_gain and mean > 2 * std
    if q.tail_over_head:
        ok = ok and tail >= head
    return measured, "met" if ok else "not met"


def answers_table(questions: list[Question], diffs: dict[str, dict], estimate_s: Optional[float] = None,
                  budget_s: Optional[float] = None) -> str:
    """Markdown: each question, its pair, what was measured and the verdict; the time budget last."""
    lines = ["| question | pair | measured (mIoU, mean ± std over seeds) | criterion | verdict |",
             "|---|---|---|---|---|"]
    for q in questions:
        measured, v = verdict(q, diffs.get(q.pair))
        crit = "none: reported either way" if q.measure_only else (
            f">= {q.min_gain:+.1f} and > 2 std" if q.min_gain else "> 2 std") + (
            ", tail gain >= head gain" if q.tail_over_head else "")
        lines.append(f"| {q.text} | {q.pair} | {measured} | {crit} | {v} |")
    if budget_s is not None and estimate_s is not None:
        lines.append(f"| the whole comparison from scratch within {budget_s / 3600:.0f} h on 2 cores | - | "
                     f"{estimate_s / 3600:.2f} h (training CPU time / 2 jobs) | <= {budget_s / 3600:.0f} h | "
                     f"{'met' if estimate_s <= budget_s else 'not met'} |")
    return "\n".join(lines)
