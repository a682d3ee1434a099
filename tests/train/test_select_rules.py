"""Selection rules and the gate on hand-written series rows (the numbers are chosen by hand, not computed)."""

from __future__ import annotations

import pytest

from animegen.train.config import validate_config
from animegen.train.select import RuleError, check_gate, parse_gate, parse_rule, select


def _row(step, tag, fid):
    return {"step": step, "path": None, "metrics": {"tag_adherence": {"value": tag}, "fid": {"value": fid}}}


ROWS = [_row(2, 40.0, 100.0), _row(4, 70.0, 130.0), _row(6, 60.0, 104.0)]
BASE = {"step": None, "metrics": {"tag_adherence": {"value": 50.0}, "fid": {"value": 90.0}}}


def test_rule_picks_argmax_and_fid_constraint_excludes_it():
    assert select(ROWS, parse_rule("max:tag_adherence"), BASE)["chosen"]["step"] == 4
    # best FID is 100 (step 2): within +5 are steps 2 and 6; the tag-adherence argmax (step 4) is excluded
    out = select(ROWS, parse_rule("max:tag_adherence where fid <= best+5"), BASE)
    assert out["chosen"]["step"] == 6
    assert out["bounds"] == {"fid <= best+5": 105.0}
    assert [c["eligible"] for c in out["candidates"]] == [True, False, True]
    assert select(ROWS, parse_rule("min:fid"), BASE)["chosen"]["step"] == 2


def test_ties_go_to_the_earliest_step():
    rows = [_row(2, 70.0, 1.0), _row(4, 70.0, 1.0)]
    assert select(rows, parse_rule("max:tag_adherence"))["chosen"]["step"] == 2


def test_gate_against_base():
    chosen = ROWS[2]  # tag 60, base 50
    assert check_gate(parse_gate("tag_adherence >= base + 5"), chosen, BASE) == []
    failures = check_gate(parse_gate("tag_adherence >= base + 15"), chosen, BASE)
    assert len(failures) == 1 and "60" in failures[0] and "65" in failures[0]


@pytest.mark.parametrize("text", ["best:tag_adherence", "max:nonsense", "max:fid where fid << 3"])
def test_bad_rules_name_the_problem(text):
    with pytest.raises(RuleError):
        parse_rule(text)


def test_config_section_checks_rule_and_gate():
    ok = validate_config({"checkpoint_eval": {"rule": "max:clip_score where kid <= best + 0.01",
                                              "gate": "tag_adherence >= base + 3"}})
    assert ok.checkpoint_eval.rule.startswith("max:clip_score")
    with pytest.raises(Exception, match="gate"):
        validate_config({"checkpoint_eval": {"gate": "fid <= best"}})
