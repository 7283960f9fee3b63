import os
import subprocess
import sys

from hccnode.worker import huge_pages_for_children


def test_worker_processes_get_huge_pages_and_a_site_setting_is_kept(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    huge_pages_for_children()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # a spawned process sees it (glibc reads it at start-up)
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['GLIBC_TUNABLES'])"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    huge_pages_for_children()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    huge_pages_for_children()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
