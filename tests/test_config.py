"""Configuration: defaults, and every bad key or type named."""

from __future__ import annotations

import pytest

from hccnode import config


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HCCNODE_CONFIG", raising=False)
    cfg = config.load()
    assert (cfg.node.ae_title, cfg.node.host, cfg.node.port) == ("HCCNODE", "127.0.0.1", 11112)
    assert cfg.data_dir == (tmp_path / "hccnode-data").resolve()
    assert cfg.study.stable_seconds == 5 and cfg.node.max_associations == 8


@pytest.mark.parametrize("text, message", [
    ("[node]\nprot = 1\n", "unknown key node.prot"),
    ("[nodes]\n", "unknown section [nodes]"),
    ("[node]\nport = '11112'\n", "node.port: expected int, got str"),
    ("[node]\nallowed = 'A'\n", "node.allowed: expected a list of str"),
    ("[node]\nae_title = 'A\\\\B'\n", "node.ae_title"),
    ("[node]\nae_title = 'SEVENTEEN_CHARSXX'\n", "not a valid AE title"),
    ("[forward]\ndestinations = ['PACS@host']\n", "forward.destinations[0]"),
    ("[node]\nport = 70000\n", "node.port: 70000 is not a TCP port"),
    ("[node]\nrole = 'scanner'\n", "node.role: 'scanner' is not one of all, receiver, worker, forwarder"),
    ("node = 1\n", "[node] must be a table"),
    ("[node\n", "not valid TOML"),
    ("[adc]\nunits = { ACME = 'furlong' }\n", "adc.units['ACME']: 'furlong' is not an ADC unit"),
    ("[adc]\nunits = { ACME = 1 }\n", "adc.units['ACME']: expected str, got int"),
    ("[adc]\nunits = 'ACME'\n", "adc.units: expected a table of str"),
])
def test_bad_files_are_reported_by_key(tmp_path, text, message):
    p = tmp_path / "hccnode.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(p)
    assert message in str(err.value) and str(p) in str(err.value)


def test_ints_are_accepted_for_floats_and_destinations_parse():
    cfg = config.from_dict({"study": {"stable_seconds": 2}, "forward": {"destinations": ["PACS@[::1]:104"]}})
    assert cfg.study.stable_seconds == 2.0
    d = config.parse_destination(cfg.forward.destinations[0])
    assert (d.ae_title, d.host, d.port) == ("PACS", "::1", 104)


def test_adc_units_per_manufacturer():
    cfg = config.from_dict({"adc": {"units": {"ACME": "1e-6 mm2/s", "Other Co": "10*-3.mm2/s"}}})
    assert cfg.adc.units == {"ACME": "1e-6 mm2/s", "Other Co": "10*-3.mm2/s"}
    assert config.Config().adc.units == {}


def test_example_config_in_deploy_is_valid_and_complete():
    from pathlib import Path
    import dataclasses
    import tomllib
    path = Path(__file__).resolve().parent.parent / "deploy" / "hccnode.toml"
    cfg = config.load(path)
    data = tomllib.loads(path.read_text())
    for section in (f.name for f in dataclasses.fields(config.Config) if f.name != "source"):
        keys = {f.name for f in dataclasses.fields(getattr(cfg, section))}
        assert set(data.get(section, {})) == keys, f"deploy/hccnode.toml [{section}] must show every key"
