"""The v4 comparison's questions and the rendered regime's protocol rule, by value."""
from uda_perturb.bench.answers import Question, answers_table, verdict
from uda_perturb.bench.protocol_rendered import STUDY, choose, model_of, v4_hours
from uda_perturb.study import load_study


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
    study = load_study("camvid_rendered_v4")
    assert len(study.methods) == 11 and study.budget_hours == 3
    pairs = {f"{a} - {b}" for a, b in study.all_pairs()}
    assert all(q.pair in study.pairs for q in study.questions) and len(pairs) == len(study.pairs) == 11
    assert "combine: sum" in " ".join(study.methods["apoda sum"])
    q = study.questions[0]
    assert (q.pair, q.min_gain, q.tail_over_head) == ("apoda - adaptsegnet", 1.0, True)


def test_a_question_without_class_groups_reports_the_miou_alone():
    measured, v = verdict(Question("q", "a - b", min_gain=1.0), {"miou": {"mean": 2.0, "std": 0.4, "n": 3}})
    assert (measured, v) == ("+2.0 ± 0.4 (n=3)", "met")


def test_the_protocol_rule_takes_the_best_source_score_among_candidates_whose_v4_fits_the_budget():
    rows = {"os8": {"v4_hours": 9.0, "source_test_miou": 40.0},
            "os16": {"v4_hours": 2.4, "source_test_miou": 35.0},
            "os16_180": {"v4_hours": 2.9, "source_test_miou": 38.0},
            "os16_150": {"v4_hours": 3.2, "source_test_miou": 39.0},  # over the budget
            "unmeasured": {"v4_hours": None, "source_test_miou": 50.0}}
    assert choose(rows) == "os16_180" and choose(rows, budget_hours=2.5) == "os16"
    assert choose({"os8": rows["os8"]}) is None
    study = load_study(STUDY)  # the candidates: os8 is the recipe's protocol, the others change only the network/size
    assert list(study.methods) == ["os8", "os16", "os16_180", "os16_150"] and study.methods["os8"] == [
        "method.name=source_only"]
    from uda_perturb.config import load_config
    from uda_perturb.study.plan import make_plan

    run = make_plan(study, "w").adaptation("os16_180", False, 0)
    net = model_of(load_config(study.recipe, run.overrides))
    assert net["backbone_kwargs"]["output_stride"] == 16 and net["head_kwargs"]["atrous_rates"] == (2, 3, 5)
    # 3 warm starts of 600 iterations and 3 x 500 iterations of each method, over 2 jobs
    assert v4_hours(2.0, {"a": 1.0, "b": 3.0}) == (3 * 600 * 2.0 + 3 * 500 * 4.0) / 2 / 3600
