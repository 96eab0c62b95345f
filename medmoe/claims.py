"""Evidence records: a paper's claim, measured against a paired control, with one verdict rule for every chapter.

Explained in the book: every chapter's section "The claim, the control, the verdict", and the primer's.
A chapter measures each claim on the same seeds and data for the treatment (the paper's mechanism) and a
control (the mechanism removed or replaced), pairs the two by seed, and keeps the record in its ``metrics.json``
under ``claims`` (``save_results(run_dir, metrics, claims=[...])``). The sentences that state a result on the page
are generated from these records by :func:`claim_sentence`, never typed.

The verdict rule (:data:`VERDICT_RULE`), the same for every claim:

* **supported**: at least 3 paired seeds, the mean paired difference favours the treatment, a one-sided paired
  t-test gives p < 0.05, and, where a chance baseline applies, the treatment beats it (its p < 0.05 too);
* **contradicted**: the mean paired difference favours the control with a one-sided p < 0.05;
* **not shown**: anything else (too few seeds, a difference within the seed-to-seed noise, or no better than
  chance). A control that shows a claim is *not* supported is a result, reported as such.

Example:
    >>> rec = paired_claim(claim="Experts beat one expert.", measure="Dice", seeds=[0, 1, 2],
    ...                    treatment=("MoE", [0.80, 0.82, 0.81]), control=("dense", [0.78, 0.79, 0.785]))
    >>> rec["verdict"], rec["delta"]["n"], round(rec["delta"]["mean"], 4)
    ('supported', 3, 0.025)
    >>> claim_sentence(rec)  # doctest: +NORMALIZE_WHITESPACE
    'Experts beat one expert. Measure: Dice. MoE 0.810 ± 0.010 vs dense 0.785 ± 0.005 over 3 paired seeds;
     Δ = +0.025 ± 0.005 (paired t = 8.66, one-sided p = 0.0065): supported.'
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["VERDICT_RULE", "ALPHA", "MIN_SEEDS", "arm", "paired_claim", "verdict", "claim_sentence", "claims_frame",
           "chance_from_null"]

ALPHA = 0.05
MIN_SEEDS = 3
VERDICT_RULE = (
    f"supported: >= {MIN_SEEDS} paired seeds, the mean paired difference favours the treatment with a one-sided "
    f"paired t-test p < {ALPHA}, and the treatment beats the chance baseline where one applies (p < {ALPHA}); "
    f"contradicted: the mean paired difference favours the control with one-sided p < {ALPHA}; "
    "not shown: anything else."
)


def _finite(values: Sequence[float], name: str) -> list[float]:
    out = []
    for v in values:
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{name} has a non-finite value {v!r}; a claim needs a number per seed")
        out.append(f)
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd


def arm(name: str, values: Sequence[float]) -> dict[str, Any]:
    """One arm of a claim: its name, per-seed values, mean and sample sd.

    Example:
        >>> arm("MoE", [1.0, 2.0, 3.0])
        {'name': 'MoE', 'values': [1.0, 2.0, 3.0], 'mean': 2.0, 'sd': 1.0}
    """
    vals = _finite(values, name)
    if not vals:
        raise ValueError(f"arm {name!r} has no values")
    mean, sd = _mean_sd(vals)
    return {"name": name, "values": vals, "mean": mean, "sd": sd}


def _one_sided_p(deltas: Sequence[float]) -> tuple[float, float]:
    """Paired t statistic and its one-sided p for mean > 0 (``(nan, nan)`` below 2 values)."""
    from scipy import stats  # local: scipy is heavy, and only verdicts need it

    n = len(deltas)
    if n < 2:
        return float("nan"), float("nan")
    mean, sd = _mean_sd(deltas)
    if sd == 0:
        return (math.inf, 0.0) if mean > 0 else (-math.inf, 1.0) if mean < 0 else (0.0, 1.0)
    t = mean / (sd / math.sqrt(n))
    return t, float(stats.t.sf(t, df=n - 1))


def verdict(deltas: Sequence[float], *, chance_p: float | None = None) -> tuple[str, dict[str, float]]:
    """The shared verdict (:data:`VERDICT_RULE`) for paired differences ``treatment - control`` oriented so that
    positive favours the treatment; returns ``(label, {"t", "p", "p_reverse"})``.

    Example:
        >>> verdict([0.1, 0.2, 0.15])[0], verdict([0.1, -0.1, 0.05])[0], verdict([-0.3, -0.2, -0.25])[0]
        ('supported', 'not shown', 'contradicted')
        >>> verdict([0.1, 0.2, 0.15], chance_p=0.4)[0]  # better than the control, not better than chance
        'not shown'
        >>> verdict([0.1, 0.2])[0]  # two seeds are too few
        'not shown'
    """
    d = _finite(deltas, "deltas")
    t, p = _one_sided_p(d)
    _, p_rev = _one_sided_p([-x for x in d])
    stats = {"t": t, "p": p, "p_reverse": p_rev}
    if len(d) < MIN_SEEDS:
        return "not shown", stats
    if p < ALPHA and (chance_p is None or chance_p < ALPHA):
        return "supported", stats
    if p_rev < ALPHA:
        return "contradicted", stats
    return "not shown", stats


def chance_from_null(observed: float, null: Sequence[float], *, name: str = "permutation") -> dict[str, Any]:
    """A chance baseline from a null distribution (e.g. permuted labels): its mean, and the one-sided p of the
    observed value, ``(1 + #null >= observed) / (1 + #null)``.

    Example:
        >>> chance_from_null(0.9, [0.1, 0.2, 0.3])["p"]
        0.25
    """
    null = _finite(null, "null")
    if not null:
        raise ValueError("a chance baseline needs at least one null value")
    p = (1 + sum(v >= observed for v in null)) / (1 + len(null))
    return {"name": name, "value": sum(null) / len(null), "p": p, "n": len(null)}


def paired_claim(*, claim: str, measure: str, seeds: Sequence[int], treatment: tuple[str, Sequence[float]],
                 control: tuple[str, Sequence[float]], higher_is_better: bool = True,
                 chance: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
    """The evidence record of one claim: both arms over the same ``seeds``, the paired differences, the chance
    baseline (``chance_from_null`` or ``{"name", "value", "p"}``), the verdict and the rule that gave it.

    ``delta["values"]`` and ``delta["mean"]`` are ``treatment - control`` (so their sign is the measure's);
    ``delta["t"]`` and ``delta["p"]`` are oriented by ``higher_is_better`` (a positive t favours the treatment, p is
    one-sided for the treatment), and ``delta["p_reverse"]`` is the one-sided p for the control.

    Raises:
        ValueError: arms of different lengths from ``seeds``, a non-finite value, or a malformed chance record.
    """
    seeds = [int(s) for s in seeds]
    t_arm, c_arm = arm(*treatment), arm(*control)
    for a in (t_arm, c_arm):
        if len(a["values"]) != len(seeds):
            raise ValueError(f"arm {a['name']!r} has {len(a['values'])} values for {len(seeds)} seeds {seeds}; "
                             "a paired claim needs one value per seed in both arms")
    raw = [t - c for t, c in zip(t_arm["values"], c_arm["values"])]
    mean, sd = _mean_sd(raw)
    if chance is not None and not {"name", "value", "p"} <= set(chance):
        raise ValueError(f"chance must have name, value and p, got {sorted(chance)}")
    label, stats = verdict(raw if higher_is_better else [-x for x in raw],
                           chance_p=None if chance is None else float(chance["p"]))
    return {
        "claim": claim, "measure": measure, "seeds": seeds, "higher_is_better": higher_is_better,
        "treatment": t_arm, "control": c_arm,
        "delta": {"values": raw, "mean": mean, "sd": sd, "n": len(raw), **stats},
        "chance": chance, "verdict": label, "rule": VERDICT_RULE, "note": note,
    }


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def claim_sentence(record: dict[str, Any]) -> str:
    """The sentence a chapter prints for one evidence record (every number comes from the record)."""
    t, c, d = record["treatment"], record["control"], record["delta"]
    sign = "+" if d["mean"] >= 0 else "-"
    text = (f"{record['claim']} Measure: {record['measure']}. {t['name']} {_num(t['mean'])} ± {_num(t['sd'])} vs "
            f"{c['name']} {_num(c['mean'])} ± {_num(c['sd'])} over {d['n']} paired seeds; "
            f"Δ = {sign}{_num(abs(d['mean']))} ± {_num(d['sd'])}")
    # t and p are stored oriented (positive t favours the treatment, also when lower is better)
    p, t_stat = d.get("p"), d.get("t")  # t is None after a JSON round trip of an infinite t
    if t_stat is None and p is not None:
        text += f" (identical Δ on every seed, one-sided p = {p:.2g})"
    elif t_stat is not None and not math.isnan(t_stat):
        text += f" (paired t = {t_stat:.2f}, one-sided p = {p:.2g})"
    ch = record.get("chance")
    if ch:
        text += f"; {ch['name']} baseline {_num(ch['value'])} (p = {ch['p']:.2g})"
    return text + f": {record['verdict']}."


def claims_frame(records: Sequence[dict[str, Any]]):
    """A compact table of records for the page (the full claim and measure are in :func:`claim_sentence`): the claim
    shortened, both arms as mean ± sd, Δ ± sd, the one-sided p, the chance baseline and the verdict; rows from 1."""
    import pandas as pd  # local: only the page needs a table

    rows = []
    for r in records:
        d = r["delta"]
        claim = r["claim"] if len(r["claim"]) <= 60 else r["claim"][:57].rstrip() + "..."
        rows.append({
            "claim": claim,
            "treatment": f"{r['treatment']['name']}: {_num(r['treatment']['mean'])} ± {_num(r['treatment']['sd'])}",
            "control": f"{r['control']['name']}: {_num(r['control']['mean'])} ± {_num(r['control']['sd'])}",
            "Δ (paired)": f"{d['mean']:+.3f} ± {_num(d['sd'])} (n={d['n']})",
            "p": None if d.get("p") is None else round(float(d["p"]), 3),
            "chance": "-" if not r.get("chance") else f"{_num(r['chance']['value'])} (p={r['chance']['p']:.2g})",
            "verdict": r["verdict"],
        })
    frame = pd.DataFrame(rows)
    frame.index = range(1, len(frame) + 1)
    return frame
