"""The v4 comparison's questions and the rendered regime's protocol rule, by value."""
from uda_perturb.bench.answers import Question, answers_table, verdict
from uda_perturb.bench.protocol_rendered import CANDIDATES, choose
from uda_perturb.bench.setups import METHODS, PAIRS, SETUPS


def diff(mean, std, n=3, tail=0.0, head=0.0):
    return {"miou": {"mean": mean, "std": std, "n": n}, "miou_tail": {"mean": tail}, "miou_head": {"mean": head}}


def test_a_question_is_met_only_beyond_twice_its_spread_and_its_own_conditions():
    q = Question("APODA beats AdaptSegNet", "apoda - adaptsegnet", min_gain=1.0, tail_over_head=True)
    assert verdict(q, diff(1.5, 0.5, tail=2.0, head=1.0))[1] == "met"
    assert verdict(q, diff(1.5, 0.8, tail=2.0, head=1.0))[1] == "not met"  # 1.5 < 2 x 0.8
    assert verdict(q, diff(0.9, 0.1, tail=2.0, head=1.0))[1] == "not met"  # under +1
    assert verdict(q, diff(1.5, 0.5, tail=0.5, head=1.0))[1] == "not met"  # head gains more than tail
    assert verdict(q, diff(1.5, 0.0, n=1))[1] == "needs 2+ seeds"
    assert verdict(q, None) == ("not run", "not answered")
    m = Question("does it matter", "a - b", measure_only=True)
    assert verdict(m, diff(-1.0, 0.3))[1] == "differs (beyond 2 std)"
    assert verdict(m, diff(-1.0, 0.6))[1] == "no difference beyond 2 std"


def test_the_answers_table_ends_with_the_budget():
    table = answers_table([Question("q", "a - b")], {"a - b": diff(2.0, 0.5)}, 2.5 * 3600, 3 * 3600)
    assert "| q | a - b | +2.0 ± 0.5 (n=3)" in table
    assert table.endswith("2.50 h (training CPU time / 2 jobs) | <= 3 h | met |")


def test_v4_lists_eleven_methods_and_every_question_is_a_compared_pair():
    setup = SETUPS["camvid_rendered_v4"]
    assert len(setup["methods"]) == 11 and all(m in METHODS for m in setup["methods"])
    pairs = {f"{a} - {b}" for a, b in PAIRS}
    assert all(q.pair in pairs for q in setup["questions"])
    assert "combine: sum" in " ".join(METHODS["apoda sum"])


def test_the_protocol_rule_takes_the_best_source_score_within_a_third_of_the_cost():
    rows = {"os8": {"cpu_seconds_per_iter": 3.0, "source_test_miou": 40.0},
            "os16": {"cpu_seconds_per_iter": 0.9, "source_test_miou": 35.0},
            "os16_180": {"cpu_seconds_per_iter": 1.0, "source_test_miou": 38.0},
            "os16_150": {"cpu_seconds_per_iter": 1.1, "source_test_miou": 39.0}}  # over budget: 1.1 > 3.0 / 3
    assert choose(rows) == "os16_180"
    assert choose({k: v for k, v in rows.items() if k != "os8"}) is None  # no reference: no rule
    assert set(CANDIDATES) >= {"os8", "os16"} and CANDIDATES["os8"][1] == []
