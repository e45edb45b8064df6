"""Mutation testing (``benchmarks/mutation.py``): mutmut 2 plants one-line bugs in the core modules, one at a
time, and runs the tests that cover each module; a mutant the tests do not fail on "survives". Runs in a
scratch clone of the repository (mutmut edits files in place), never in the working tree, and writes the score
per module with every surviving mutant's diff. Each mutant's tests run in a fork of a server that has imported
torch once (:mod:`.fork_runner`): about 3 s per mutant on a busy machine against about 10 s with a fresh
interpreter. Not part of CI, nor of the installed package: it lives under ``benchmarks/mutation_testing/``.

    pip install ".[mutation]"
    python benchmarks/mutation.py                                   # every module of the [mutmut] set
    python benchmarks/mutation.py --modules uda_perturb/mixing.py   # one
"""
from __future__ import annotations

import argparse
import configparser
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from uda_perturb.bench.report import add_results_options, check_replace, environment, results_folder, write_results

ROOT = Path(__file__).resolve().parents[2]


def configured_modules() -> list[str]:
    """The modules of setup.cfg's ``[mutmut] paths_to_mutate``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [p.strip() for p in cfg["mutmut"]["paths_to_mutate"].split(",") if p.strip()]


# modules reached through the public API (``up.perturb_and_defend``, registries) that an import scan misses or
# matches in the whole suite, and modules whose pinning tests sit behind slow ones: the test files (or pytest node
# ids) that pin their behaviour, fastest first (pytest -x stops at the first failure)
TESTS = {
    "uda_perturb/data/label_maps.py": ["tests/test_behaviour_pins.py::test_label_id_tables_entry_by_entry",
                                       "tests/test_behaviour_pins.py::test_ignore_is_255_in_every_table_and_in_the_lookup",
                                       "tests/test_behaviour_pins.py::test_class_names_and_palettes_are_the_published_ones",
                                       "tests/test_datasets.py"],
    # the label-follow pins, normalisation round trips and dataset tests; not the slow whole-network files
    "uda_perturb/data/transforms.py": ["tests/test_transform_random.py", "tests/test_transform_values.py",
                                       "tests/test_behaviour_pins.py",
                                       "tests/test_dacs.py", "tests/test_datasets.py"],
    "uda_perturb/perturb.py": ["tests/test_perturb_settings.py", "tests/test_perturb_steps.py", "tests/test_perturb.py",
                               "tests/test_defenses.py",
                               "tests/test_controls.py", "tests/test_behaviour_pins.py"],
    "uda_perturb/attacks.py": ["tests/test_perturb.py", "tests/test_controls.py", "tests/test_defenses.py",
                               "tests/test_registry.py"],
    "uda_perturb/defenses.py": ["tests/test_defenses.py", "tests/test_defense_reference.py", "tests/test_perturb.py",
                                "tests/test_behaviour_pins.py"],
    "uda_perturb/defense_pass.py": ["tests/test_defense_reference.py", "tests/test_first_step.py",
                                    "tests/test_defenses.py"],
    "uda_perturb/first_step.py": ["tests/test_first_step.py", "tests/test_perturb.py"],
    "uda_perturb/perturb_geometry.py": ["tests/test_perturb_steps.py", "tests/test_perturb.py",
                                        "tests/test_perturb_settings.py", "tests/test_controls.py"],
    "uda_perturb/perturb_checks.py": ["tests/test_perturb_settings.py", "tests/test_perturb_steps.py",
                                      "tests/test_controls.py", "tests/test_perturb.py", "tests/test_own_loop.py",
                                      "tests/test_first_step.py"],
    "uda_perturb/engine/checkpoint.py": ["tests/test_checkpoint_values.py", "tests/test_user_errors.py",
                                         "tests/test_run_folder.py", "tests/test_trainer.py",
                                         "tests/test_camvid_rendered.py"],
    "uda_perturb/methods/perturbation_addon.py": ["tests/test_perturbation_addon.py", "tests/test_call_sites.py",
                                                  "tests/test_own_loop.py", "tests/test_behaviour_pins.py",
                                                  "tests/test_methods.py", "tests/test_dacs.py",
                                                  "tests/test_self_training.py"],
    # reached through up.capture_features and the methods' training steps: the call-site tests first
    "uda_perturb/capture.py": ["tests/test_call_sites.py", "tests/test_own_loop.py", "tests/test_readme_examples.py"],
    "uda_perturb/methods/dacs.py": ["tests/test_dacs_step.py", "tests/test_call_sites.py", "tests/test_dacs.py",
                                    "tests/test_self_training.py"],
    "uda_perturb/methods/base.py": ["tests/test_method_base.py", "tests/test_call_sites.py", "tests/test_methods.py",
                                    "tests/test_dacs_step.py", "tests/test_perturbation_addon.py",
                                    "tests/test_own_loop.py"],
    "uda_perturb/attack_combination.py": ["tests/test_attack_combination.py", "tests/test_perturb_steps.py",
                                          "tests/test_call_sites.py", "tests/test_perturb.py",
                                          "tests/test_perturbation_addon.py"],
    # the statistics are read through perturb_and_defend and the add-on's metrics: the files that check their values
    "uda_perturb/objective_stats.py": ["tests/test_objective_tracker.py", "tests/test_attack_combination.py",
                                       "tests/test_defense_reference.py",
                                       "tests/test_first_step.py", "tests/test_perturbation_addon.py",
                                       "tests/test_call_sites.py", "tests/test_bench_attack_stats.py"],
    "uda_perturb/data/rare_class_sampling.py": ["tests/test_daformer_rules.py", "tests/test_call_sites.py",
                                                "tests/test_dacs.py", "tests/test_behaviour_pins.py"],
    "uda_perturb/engine/loaders.py": ["tests/test_loaders.py", "tests/test_call_sites.py",
                                      "tests/test_daformer_rules.py", "tests/test_user_errors.py"],
    # methods reached through the registry (build_method): the step-level tests
    "uda_perturb/methods/adaptsegnet.py": ["tests/test_method_base.py", "tests/test_call_sites.py",
                                           "tests/test_methods.py"],
    "uda_perturb/methods/advent.py": ["tests/test_method_base.py", "tests/test_call_sites.py",
                                      "tests/test_methods.py"],
    "uda_perturb/methods/minent.py": ["tests/test_method_base.py", "tests/test_call_sites.py",
                                      "tests/test_methods.py"],
    "uda_perturb/methods/source_only.py": ["tests/test_method_base.py", "tests/test_call_sites.py",
                                           "tests/test_methods.py"],
    "uda_perturb/methods/apoda.py": ["tests/test_method_base.py", "tests/test_perturbation_addon.py",
                                     "tests/test_methods.py"],
    "uda_perturb/methods/feature_distance.py": ["tests/test_feature_distance.py", "tests/test_daformer_rules.py",
                                                "tests/test_self_training.py"],
}


def tests_for(module: str) -> list[str]:
    """The test files that exercise ``module``: :data:`TESTS`, else those naming its import path (so each mutant
    runs seconds, not the whole suite)."""
    if module in TESTS:
        return TESTS[module]
    dotted = module.removesuffix(".py").replace("/", ".")
    stem = Path(module).stem
    hits = []
    for test in sorted((ROOT / "tests").glob("test_*.py")):
        text = test.read_text()
        if dotted in text or f"import {stem}" in text or f".{stem} import" in text:
            hits.append(f"tests/{test.name}")
    return hits or ["tests"]


def sync_clone(clone: Path, fresh: bool = False) -> None:
    """Make ``clone`` a checkout of the repository's current commit. Its mutmut cache is kept unless ``fresh``:
    mutmut itself drops the mutants of changed source lines and retests every survivor when the tests change,
    while a killed mutant stays killed (tests are added, not weakened), so a rerun after new tests costs only
    the survivors."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    if not (clone / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    current = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    if current != head:
        subprocess.run(["git", "fetch", "-q", str(ROOT), head], cwd=clone, check=True)
    # always: a run stopped mid-mutant leaves that mutant written into the source (and mutmut's .bak beside it)
    subprocess.run(["git", "reset", "-q", "--hard", head], cwd=clone, check=True)
    for backup in clone.rglob("*.py.bak"):
        backup.unlink()
    drop_bytecode(clone)  # runs here write none (ENV below; the fork server sets it too)
    if fresh:
        (clone / ".mutmut-cache").unlink(missing_ok=True)


FORK_RUNNER = Path(__file__).with_name("fork_runner.py")
# no bytecode: a same-size mutant written in the same second as the .pyc of the code before it could be shadowed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# process groups started here (mutmut with its worker and test processes, fork servers with their children):
# stopped together when the script ends or is stopped, or an orphaned mutmut worker goes on writing mutants
# into a clone a later run uses
GROUPS: set[int] = set()


def start_group(cmd: Sequence[str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, registered for :func:`stop_groups`."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    GROUPS.add(proc.pid)
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole process group (nothing of it outlives the call) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    GROUPS.discard(proc.pid)


def stop_groups(signum: int = 0, frame: object = None) -> None:
    """Kill every process group still registered (the handler of SIGTERM / SIGINT, then exit 128 + signum)."""
    for pgid in list(GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if signum:
        os._exit(128 + signum)


def run_in_group(cmd: Sequence[str], cwd: Path, timeout: float, progress: Callable[[], int],
                 stall: float = 600.0, restarts: int = 3) -> None:
    """Run ``cmd`` in its own process group for at most ``timeout`` seconds, then kill what is left of it. When
    ``progress()`` (mutants tested so far) stands still for ``stall`` seconds the group is killed and ``cmd``
    started again: mutmut 2 waits forever on a worker process that died, and its cache keeps what was done."""
    deadline = time.monotonic() + timeout
    for _ in range(restarts + 1):
        proc = start_group(cmd, cwd)
        last, since, stalled = progress(), time.monotonic(), False
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(5)
                now = progress()
                if now != last:
                    last, since = now, time.monotonic()
                stalled = time.monotonic() - since > stall
                if stalled:
                    print(f"{' '.join(cmd[:4])}: no mutant finished in {stall:.0f} s; restarting", flush=True)
                    break
        finally:
            stop_group(proc)
        if not stalled:
            return


@contextmanager
def fork_server(clone: Path) -> Iterator[Optional[str]]:
    """A :mod:`fork_runner` server for ``clone`` while the block runs; yields the client command prefix."""
    sock = str(clone / ".fork_runner.sock")
    server = start_group([sys.executable, str(FORK_RUNNER), "serve", sock], clone)
    try:
        yield f"{sys.executable} {FORK_RUNNER} client {sock}"
    finally:
        stop_group(server)


def drop_bytecode(root: Path) -> None:
    """Delete the clone's cached bytecode, left by a checkout used before (see :data:`ENV`)."""
    for cache in list(root.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def run_module(clone: Path, module: str, tests: Sequence[str], timeout: int, client: Optional[str] = None,
               run: bool = True) -> dict:
    """mutmut on one module in ``clone`` (unless ``run`` is false: only read its cache); returns its counts and
    the surviving mutants' diffs. With ``client`` (a :func:`fork_server`'s command) each mutant's tests run in a
    fork of a process that has torch imported."""
    runner = (client or "python -m pytest") + " -x -q -p no:cacheprovider " + " ".join(tests)
    # a fixed allowance on top of twice the unmutated run: a forked run takes about a second, and a slow start
    # on a busy machine must not count as a timeout
    cache = clone / ".mutmut-cache"
    if run:
        run_in_group(["mutmut", "run", "--paths-to-mutate", module, "--runner", runner, "--no-progress",
                      "--test-time-base", "15"], clone, timeout, lambda: tested_so_far(cache, module))
    status = mutant_status(cache, module)
    survivors = [i for i, s in status.items() if s in ("bad_survived", "stale_survived")]
    diffs = {i: subprocess.run(["mutmut", "show", str(i)], cwd=clone, capture_output=True, text=True).stdout
             for i in survivors}
    counts = {k: sum(s == k for s in status.values()) for k in ("ok_killed", "bad_survived", "bad_timeout",
                                                                  "ok_suspicious", "untested", "skipped",
                                                                  "stale_survived")}
    tested = (counts["ok_killed"] + counts["bad_survived"] + counts["bad_timeout"] + counts["ok_suspicious"]
              + counts["stale_survived"])
    return {"module": module, "tests": list(tests), "killed": counts["ok_killed"], "survived": len(survivors),
            "timed_out": counts["bad_timeout"], "suspicious": counts["ok_suspicious"],
            "untested": counts["untested"], "not_retested": counts["stale_survived"], "total": tested,
            "score": round(100.0 * (tested - len(survivors)) / tested, 1) if tested else None, "survivors": diffs}


def tested_so_far(cache: Path, module: str) -> int:
    """How many of ``module``'s mutants have a result in the cache (-1 while it cannot be read)."""
    import sqlite3

    try:
        return sum(s not in ("untested", "stale_survived") for s in mutant_status(cache, module).values())
    except sqlite3.Error:
        return -1


def mutant_status(cache: Path, module: str) -> dict[int, str]:
    """``{mutant id: status}`` of ``module``'s mutants in mutmut 2's sqlite cache (``ok_killed``,
    ``bad_survived``, ``bad_timeout``, ``ok_suspicious``, ``untested``, ``skipped``), and ``stale_survived``
    for a mutant not killed whose status was recorded against other tests than the last run's: a run stopped by
    its timeout leaves earlier survivors unretested, and they count as surviving until a run kills them."""
    import sqlite3

    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as db:  # never creates the file
        rows = db.execute("SELECT Mutant.id, Mutant.status, Mutant.tested_against_hash FROM Mutant JOIN Line ON "
                          "Mutant.line = Line.id JOIN SourceFile ON Line.sourcefile = SourceFile.id WHERE "
                          "SourceFile.filename = ?", (module,)).fetchall()
        current = db.execute("SELECT value FROM MiscData WHERE key = 'hash_of_tests'").fetchone()
    tests_hash = current[0] if current else None
    return {int(i): str(s) if s in ("ok_killed", "untested") or h == tests_hash else "stale_survived"
            for i, s, h in rows}


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Clone, mutate module by module, write ``mutation.md/.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", nargs="+", help="default: setup.cfg's [mutmut] paths_to_mutate")
    ap.add_argument("--work-dir", default="runs/mutation", help="the scratch clone (kept: a rerun resumes)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per module")
    ap.add_argument("--jobs", type=int, default=2, help="modules mutated in parallel, one scratch clone each")
    ap.add_argument("--name", default="mutation")
    ap.add_argument("--fresh", action="store_true", help="forget the mutants killed by earlier runs")
    ap.add_argument("--report-only", action="store_true", help="run nothing: write the results of the clones' caches")
    ap.add_argument("--no-fork-server", action="store_true",
                    help="start a fresh interpreter per mutant (about 10x slower; the fork server's check)")
    add_results_options(ap)
    args = ap.parse_args(argv)
    if shutil.which("mutmut") is None:
        raise SystemExit('mutation testing needs mutmut 2: pip install ".[mutation]"')
    out = results_folder(args, results_dir)
    check_replace(args, out, args.name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_groups)
    modules = args.modules or configured_modules()
    clones = [Path(args.work_dir).resolve() / f"clone{j}" for j in range(max(1, min(args.jobs, len(modules))))]
    for clone in clones:  # one clone per job: mutmut edits files in place and keeps its cache in the clone
        if not args.report_only:  # a report reads the clones as the run left them
            sync_clone(clone, args.fresh)

    def job(j: int) -> list[dict]:
        done = []
        quiet = args.no_fork_server or args.report_only
        with (nullcontext(None) if quiet else fork_server(clones[j])) as client:
            for module in modules[j::len(clones)]:
                row = run_module(clones[j], module, tests_for(module), args.timeout, client, not args.report_only)
                print(f"{module}: {row['killed']} killed, {row['survived']} survived ({row['score']}%)",
                      flush=True)
                done.append(row)
        return done

    with ThreadPoolExecutor(max_workers=len(clones)) as pool:
        finished = [row for rows_of_job in pool.map(job, range(len(clones))) for row in rows_of_job]
    rows = sorted(finished, key=lambda r: modules.index(r["module"]))
    total = sum(r["total"] for r in rows)
    survived = sum(r["survived"] for r in rows)
    score = round(100.0 * (total - survived) / total, 1) if total else None
    md = ["# Mutation testing (mutmut 2)", "",
          f"One-line mutants of each module, run against the tests that import it; **{score}%** of {total} mutants "
          "killed overall (goal: 85%). Surviving mutants are listed with their diff: each is either a gap to close "
          "with a test or an equivalent mutant (same behaviour), marked as such when reviewed.", "",
          "| module | tests | mutants tested | killed | survived (of which not retested against the newest tests) "
          "| timed out | not reached (timeout) | score |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['module']} | {', '.join(Path(t).name for t in r['tests'])} | {r['total']} | {r['killed']} | "
           f"{r['survived']} ({r['not_retested']}) | {r['timed_out']} | {r['untested']} | {r['score']}% |"
           for r in rows]
    for r in rows:
        if r["survivors"]:
            md += ["", f"## Survivors in {r['module']}", ""]
            md += [f"```diff\n{d.strip()}\n```" for d in r["survivors"].values()]
    write_results(out, args.name, {"environment": environment(), "score": score, "modules": rows}, "\n".join(md))
    print("\n".join(md[:12]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
