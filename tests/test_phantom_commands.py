"""`hccnode phantom` command line."""

from __future__ import annotations

import json

from hccnode import cli


def test_help_documents_every_option(capsys):
    assert cli.main(["phantom", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--kind", "--vendor", "--seed", "--slices", "--matrix", "--pixel-spacing", "--thickness", "--spacing",
                "--noise", "--hct", "--liver-ecv", "--tumor-ecv", "--tumor-mm", "--arterial-delay", "--portal-delay",
                "--equilibrium-delay", "--dect-phases", "--kev", "--no-vnc", "--b-values", "--t2-ratio", "--adc",
                "--followup-weeks", "--followup-size", "--move", "--fault", "--enhanced", "--compression", "--split",
                "--seg", "--no-progress", "--no-vessels"):
        assert opt in text, opt


def test_cli_writes_study_and_truth(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = cli.main(["phantom", str(out), "--slices", "3", "--matrix", "32", "--seed", "5", "--equilibrium-delay", "240",
                   "--hct", "0.35", "--tumor-ecv", "0.4", "--move", "equilibrium:2,0,0:3", "--fault", "no_description",
                   "--no-progress"])
    assert rc == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["hct"] == 0.35 and truth["delays_s"]["equilibrium"] == 240.0
    assert truth["studies"][0]["rois"]["tumor"]["ecv"] == 0.4
    eq = next(s for s in truth["studies"][0]["series"] if s["kind"] == "ct_equilibrium")
    assert eq["motion"] == {"shift_mm": [2.0, 0.0, 0.0], "rotation_deg": 3.0}
    assert len(list((out / eq["folder"]).glob("*.dcm"))) == 3


def test_cli_usage_errors_exit_2_and_name_the_field(tmp_path, capsys):
    assert cli.main(["phantom", str(tmp_path / "a"), "--tumor-mm", "300", "--no-progress"]) == 2
    assert "tumor_diameters_mm" in capsys.readouterr().err
    assert cli.main(["phantom", str(tmp_path / "b"), "--move", "arterial:1,2", "--no-progress"]) == 2
    assert cli.main(["phantom", str(tmp_path / "c"), "--hct", "1.5", "--no-progress"]) == 2
    assert "hct" in capsys.readouterr().err
