import re
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


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])   # field 19 of proc(5): nice


def test_analysis_processes_run_at_the_configured_nice_value_above_the_node(node_factory):
    """[worker] nice: a running node's analysis processes yield the processors to its receivers
    and senders (the node's own process stays at its priority)."""
    import os
    from pathlib import Path

    from conftest import wait_until

    node = node_factory(worker={"processes": 2, "nice": 7}, node={"receiver_processes": 1})  # no receiver children
    node.start()
    own = _niceness(node.proc.pid)

    def analysis_processes() -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == node.proc.pid
                and b"multiprocessing" in Path(f"/proc/{p.name}/cmdline").read_bytes()
                and b"resource_tracker" not in Path(f"/proc/{p.name}/cmdline").read_bytes()]

    # A process takes its nice value in its initializer, just after it appears.
    wait_until(lambda: len(analysis_processes()) == 2 and {_niceness(pid) for pid in analysis_processes()}
               == {min(own + 7, 19)}, 60, what="2 analysis processes at nice 7 above the node")
    assert own == os.nice(0) and _niceness(node.proc.pid) == own
    # Their start-up (one warm-up per process, in the pool: a process may take both) ends with
    # worker.warm, so a benchmark can start after it.
    wait_until(lambda: len(re.findall(r"worker\.warm pid=(\d+)", node.events())) == 2, 120,
               what="two worker.warm events")
    assert {int(p) for p in re.findall(r"worker\.warm pid=(\d+)", node.events())} <= set(analysis_processes())


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
