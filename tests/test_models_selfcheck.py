"""Self-check: each card reproduces its paper's worked numbers; a card that misquotes the paper fails."""

import copy
import tomllib
from pathlib import Path

import pytest

from hccnode import cli
from hccnode.models import selfcheck
from hccnode.models.card import load_cards, parse_card

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
CARDS = load_cards([CARD_DIR])


@pytest.mark.parametrize("key", sorted(CARDS))
def test_every_card_passes_its_selfcheck(key):
    results = selfcheck.run(CARDS[key])
    assert results and all(r.ok for r in results), [r.message for r in results if not r.ok]


def mutated(name, mutate):
    data = copy.deepcopy(tomllib.loads((CARD_DIR / name).read_text(encoding="utf-8")))
    mutate(data)
    return parse_card(data, name)


@pytest.mark.parametrize("name, mutate, kind", [
    ("p002-nomogram.toml", lambda d: d["logistic"]["terms"][1].update(beta=0.134), "coefficients"),
    ("p002-nomogram.toml", lambda d: d["selfcheck"][0]["rows"][0].update(se="0.020"), "coefficients"),
    ("p000-ecv-logistic.toml", lambda d: d["logistic"].update(intercept=-2.624), "coefficients"),
    ("p003-nomogram.toml", lambda d: d["logistic"]["terms"][2].update(odds_ratio=0.612), "coefficients"),
    ("p000-ecv-cutoff.toml", lambda d: d["selfcheck"][0]["counts"].update(tp=44, fn=32), "two_by_two"),
    ("p004-tipm.toml", lambda d: d["selfcheck"][1].update(expect_cohort_consistent=True), "two_by_two"),
    ("p002-nomogram.toml", lambda d: d["logistic"].update(intercept=-3.0), "constant"),
    ("p001-tumor-ecv.toml", lambda d: d["cutoff"].update(threshold=40.0), "evaluate"),
    ("p001-tumor-ecv.toml", lambda d: d["performance"][2].update(value=0.348), "hazard_ratios"),
    ("p003-nomogram.toml", lambda d: d["logistic"]["terms"][1].update(odds_ratio=1 / 0.189), "order"),
])
def test_misquoted_card_fails(name, mutate, kind):
    c = mutated(name, mutate)
    failed = [r for r in selfcheck.run(c) if not r.ok]
    assert kind in {r.kind for r in failed}
    assert "FAIL" in selfcheck.summary_line(c, selfcheck.run(c))


def test_p000_constant_check_shows_both_readings_fail():
    c = CARDS["p000-ecv-logistic@1.0.0"]
    (r,) = [r for r in selfcheck.run(c) if r.kind == "constant"]
    assert r.ok and "ECV as a fraction" in r.message and "ECV in %" in r.message
    assert r.message.count("-> inconsistent") == 2


def test_printed_numbers_keep_their_rounding():
    assert selfcheck.printed("0.010") == (0.01, pytest.approx(0.0005))
    assert selfcheck.printed("75") == (75.0, 0.5)
    with pytest.raises(ValueError):
        selfcheck.printed("n/a")


def test_check_command_one_line_per_card(capsys, tmp_path):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    assert cli.main(["-c", str(cfg), "models", "check", "--cards", str(CARD_DIR)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(CARDS)
    for line in lines:
        key = line.split(" ", 1)[0]
        # the paper by first author and year, never the stored text's file name (issue 16 point 8)
        assert key in CARDS and f"({CARDS[key].reference.short()}): ok" in line and ".txt" not in line


def test_check_command_fails_on_a_misquoted_card(capsys, tmp_path):
    bad = tmp_path / "cards"
    bad.mkdir()
    text = (CARD_DIR / "p002-nomogram.toml").read_text(encoding="utf-8").replace("beta = 0.143", "beta = 0.413")
    (bad / "p002-nomogram.toml").write_text(text, encoding="utf-8")
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    assert cli.main(["-c", str(cfg), "models", "check", "--cards", str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out
