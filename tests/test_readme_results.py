"""Every results file the README cites is in the repository (a clean clone has exactly the committed ones)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# results stems, as the benchmarks name them; other backticked files (a run folder's results.json) are not cited
STEM = r"(?:compare|ablate|speed|setup|curve|mutation|fault|perturb|demo)[A-Za-z0-9_.-]*?"


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


def test_every_results_file_the_readme_cites_is_committed():
    names = cited((ROOT / "README.md").read_text())
    assert len(names) > 20  # the README's results sections are all read
    missing = sorted(n for n in names if not (RESULTS / n).is_file())
    assert not missing, f"the README cites results files that are not in benchmarks/results: {missing}"
