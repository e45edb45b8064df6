"""`uda-perturb bench --quick`: the comparison end to end (subprocess runs, report files), on synthetic data."""
import json

from uda_perturb.cli import main


def test_bench_quick_runs_the_comparison_and_writes_markdown_json_and_plot(tmp_path):
    args = ["bench", "--dataset", "synthetic", "--quick", "--methods", "source_only", "apoda", "dacs", "--aug", "off",
            "--jobs", "2", "--work-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    md = (tmp_path / "results" / "compare_synthetic_quick.md").read_text()
    data = json.loads((tmp_path / "results" / "compare_synthetic_quick.json").read_text())
    assert set(data["results"]) == {"warm start", "source_only", "apoda", "dacs"}
    assert data["cost"]["source_only"]["relative_to_source_only"] == 1.0 and "| dacs |" in md
    assert data["cost"]["apoda"]["relative_to_source_only"] > 1.0  # APODA's step does more than source-only's
    for label in data["results"]:
        assert f"| {label} | 1 |" in md
        assert 0.0 <= data["results"][label]["target_test"]["miou"]["mean"] <= 100.0
        assert "mean_entropy" in data["results"][label]["target_test"]
    assert data["environment"]["adapt_iters"] == 10 and data["environment"]["seeds"] == [0]
    assert (tmp_path / "results" / "compare_synthetic_quick.png").is_file()
    # a second invocation skips finished runs and only rewrites the report
    assert main(args) == 0
    again = json.loads((tmp_path / "results" / "compare_synthetic_quick.json").read_text())
    assert again["results"] == data["results"]
