"""Every results file the READMEs cite is in the repository (a clean clone has exactly the committed ones), and
every file path they cite exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# results stems, as the benchmarks name them; other backticked files (a run folder's results.json) are not cited
STEM = r"(?:compare|ablate|study|speed|setup|curve|mutation|fault|perturb|demo)[A-Za-z0-9_.-]*?"


def cited(readme: str) -> set[str]:
    """File names under benchmarks/results the text cites: as paths, as `name.md`, or as `name.md/.json/.png`."""
    names = set(re.findall(r"benchmarks/results/([A-Za-z0-9_.-]+\.(?:md|json|png))", readme))
    for stem, first, more in re.findall(rf"`({STEM})\.(md|json|png)((?:/\.(?:md|json|png))*)`", readme):
        names |= {f"{stem}.{ext}" for ext in [first, *re.findall(r"\.(md|json|png)", more)]}
    return names


def test_cited_names_are_found_in_every_form():
    text = ("see `compare_x.md/.json/.png`, ![p](benchmarks/results/ablate_y_eps.png), `setup_z.md`, and a run's "
            "`results.json`")
    assert cited(text) == {"compare_x.md", "compare_x.json", "compare_x.png", "ablate_y_eps.png", "setup_z.md"}


READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "uda_perturb" / "configs" / "README.md"]


def test_every_results_file_the_readmes_cite_is_committed():
    names = set().union(*(cited(p.read_text()) for p in READMES))
    assert len(names) > 30  # the benchmarks' history is all read
    missing = sorted(n for n in names if not (RESULTS / n).is_file())
    assert not missing, f"the READMEs cite results files that are not in benchmarks/results: {missing}"
    relative = set(re.findall(r"\]\(results/([A-Za-z0-9_.-]+)\)", READMES[1].read_text()))  # benchmarks/README's links
    assert relative and not sorted(n for n in relative if not (RESULTS / n).is_file())


def test_every_file_path_the_readmes_link_or_name_exists():
    for readme in READMES:
        text = readme.read_text()
        links = re.findall(r"\]\(([^)#:]+)\)", text)
        scripts = re.findall(r"python (benchmarks/[a-z_]+\.py)", text)
        for path in links:
            assert (readme.parent / path).exists(), f"{readme.name} links {path}, which does not exist"
        for script in scripts:
            assert (ROOT / script).is_file(), f"{readme.name} names {script}, which does not exist"


class _Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


def commands(text: str) -> list[str]:
    """``uda-perturb ...`` and ``python benchmarks/....py ...`` lines of the READMEs' code blocks and backticks,
    continuation lines joined."""
    text = text.replace("\\\n", " ")
    start = r"(?:uda-perturb -?-?[a-z]|python benchmarks/)"
    found = re.findall(rf"^\s*({start}[^\n#`]*)", text, re.M)
    found += re.findall(rf"`({start}[^`]*)`", text)
    return [" ".join(c.split()) for c in found]


def test_every_command_in_the_readmes_parses_against_its_cli_or_script(monkeypatch):
    import argparse
    import runpy
    import shlex
    import sys

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    seen = 0
    for readme in READMES:
        for cmd in commands(readme.read_text()):
            words = shlex.split(cmd.replace("...", "").replace("<its .pth>", "x.pth"))
            words = [w for w in words if w not in ("DIR",)] if "mutation" not in cmd else words
            try:
                if words[0] == "uda-perturb":
                    from uda_perturb.cli import main as cli_main

                    cli_main(words[1:])
                else:
                    script = ROOT / words[1]
                    monkeypatch.setattr(sys, "argv", [str(script), *words[2:]])
                    monkeypatch.syspath_prepend(str(script.parent))
                    runpy.run_path(str(script), run_name="__main__")
            except _Parsed:
                seen += 1
            except SystemExit as exc:
                raise AssertionError(f"{readme.relative_to(ROOT)}: `{cmd}` does not parse (exit {exc.code})") from None
    assert seen > 15
