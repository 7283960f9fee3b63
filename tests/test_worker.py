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
