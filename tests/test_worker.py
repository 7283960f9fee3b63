import subprocess
import sys


def test_warm_up_reads_highdicoms_tables_before_the_first_study():
    """A worker process reads highdicom's module tables when it starts, not in its first SEG."""
    code = ("from highdicom._standard_utils import get_module_attribute_map as tables\n"
            "from hccnode.worker import _warm_up\n"
            "before = tables.cache_info().currsize\n"
            "_warm_up()\n"
            "print(before, tables.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]


def test_job_settings_carry_what_a_job_takes_from_the_configuration(tmp_path):
    """Built once from the configuration, and sent whole to a job's process (so picklable)."""
    import pickle

    from hccnode.config import Config, load
    from hccnode.worker import JobSettings

    path = tmp_path / "hccnode.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[forward]\ndestinations = ["PACS@127.0.0.1:104"]\n'
                    '[phases]\nrules_file = "site_rules.toml"\n[adc]\nunits = { ACME = "1e-6 mm2/s" }\n'
                    '[priors]\ntolerance_days = 3\n[store]\nurl = "postgresql://u@127.0.0.1:5432/site"\n')
    settings = JobSettings.of(load(path))
    assert settings == JobSettings(str(tmp_path / "data"), "postgresql://u@127.0.0.1:5432/site", ("PACS@127.0.0.1:104",),
                                   "site_rules.toml", {"ACME": "1e-6 mm2/s"}, 3.0)
    assert pickle.loads(pickle.dumps(settings)) == settings
    defaults = JobSettings.of(Config())
    assert (defaults.store_url, defaults.destinations, defaults.rules_file, defaults.adc_units) == ("", (), "", {})
