"""medmoe.claims: the evidence record and the one verdict rule every chapter uses (issue 13)."""

from __future__ import annotations

import json
import math

import pytest

from medmoe.claims import (
    ALPHA,
    chance_from_null,
    claim_sentence,
    claims_frame,
    paired_claim,
    verdict,
)


@pytest.mark.parametrize("deltas, expected", [
    ([0.10, 0.20, 0.15], "supported"),          # consistent and clear of the noise
    ([0.10, -0.10, 0.05], "not shown"),         # within the seed-to-seed noise
    ([-0.30, -0.20, -0.25], "contradicted"),    # the control is better
    ([0.10, 0.20], "not shown"),                # two seeds are too few
    ([0.0, 0.0, 0.0], "not shown"),             # no difference at all
    ([0.01, 0.01, 0.01], "supported"),          # zero spread, positive: t is infinite
])
def test_the_verdict_rule(deltas, expected):
    assert verdict(deltas)[0] == expected


def test_a_claim_must_also_beat_chance_where_chance_applies():
    assert verdict([0.1, 0.2, 0.15], chance_p=0.5)[0] == "not shown"
    assert verdict([0.1, 0.2, 0.15], chance_p=ALPHA / 2)[0] == "supported"


def test_lower_is_better_flips_the_orientation_not_the_delta():
    rec = paired_claim(claim="c", measure="loss", seeds=[0, 1, 2], treatment=("moe", [1.0, 1.2, 1.05]),
                       control=("dense", [1.5, 1.6, 1.55]), higher_is_better=False)
    assert rec["delta"]["mean"] == pytest.approx(-0.4667, abs=1e-4)
    assert rec["verdict"] == "supported"
    assert rec["delta"]["t"] > 0 and rec["delta"]["p"] < ALPHA  # oriented: positive t favours the treatment
    text = claim_sentence(rec)
    assert "Δ = -0.467" in text and "paired t = 14.00" in text and "one-sided p = 0.0025" in text
    assert claims_frame([rec])["p"][1] < ALPHA


def test_record_fields_and_json():
    null = [0.01 * i for i in range(20)]
    rec = paired_claim(claim="NMI above chance.", measure="NMI", seeds=[3, 4, 5],
                       treatment=("router", [0.5, 0.6, 0.55]), control=("permuted", [0.1, 0.12, 0.11]),
                       chance=chance_from_null(0.55, null))
    assert set(rec) >= {"claim", "measure", "treatment", "control", "delta", "chance", "verdict", "rule", "seeds"}
    assert rec["treatment"]["mean"] == pytest.approx(0.55) and rec["control"]["sd"] == pytest.approx(0.01)
    assert rec["delta"]["values"] == pytest.approx([0.4, 0.48, 0.44]) and rec["delta"]["n"] == 3
    assert rec["chance"]["p"] == pytest.approx(1 / 21)
    json.dumps(rec)  # a plain JSON record (metrics.json)


def test_the_sentence_is_made_of_the_records_numbers():
    rec = paired_claim(claim="MoE helps.", measure="Dice", seeds=[0, 1, 2], treatment=("MoE", [0.8, 0.82, 0.81]),
                       control=("dense", [0.78, 0.79, 0.785]))
    text = claim_sentence(rec)
    for piece in ("0.810", "0.785", "+0.025", "3 paired seeds", "supported"):
        assert piece in text
    frame = claims_frame([rec])
    assert list(frame["verdict"]) == ["supported"] and not math.isnan(frame["p"][1]) and list(frame.index) == [1]


@pytest.mark.parametrize("kwargs, match", [
    ({"treatment": ("a", [1.0, 2.0]), "control": ("b", [1.0, 2.0, 3.0])}, "2 values for 3 seeds"),
    ({"treatment": ("a", [1.0, float("nan"), 2.0]), "control": ("b", [1.0, 2.0, 3.0])}, "non-finite"),
    ({"treatment": ("a", [1.0, 2.0, 3.0]), "control": ("b", [1.0, 2.0, 3.0]), "chance": {"p": 0.1}},
     "chance must have"),
])
def test_bad_records_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_claim(claim="c", measure="m", seeds=[0, 1, 2], **kwargs)


def test_a_record_read_back_from_metrics_json_still_makes_its_sentence():
    """metrics.json stores an infinite t (every seed moved by the same amount) as null."""
    from medmoe.repro.runner import _json_safe

    rec = paired_claim(claim="c.", measure="m", seeds=[0, 1, 2], treatment=("a", [1.0, 2.0, 3.0]),
                       control=("b", [0.5, 1.5, 2.5]))
    back = json.loads(json.dumps(_json_safe(rec)))
    assert back["delta"]["t"] is None and "identical Δ on every seed" in claim_sentence(back)
