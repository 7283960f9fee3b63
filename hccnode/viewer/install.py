"""Install OHIF's prebuilt viewer (npm `@ohif/app`, one pinned version) for Orthanc's ServeFolders.

The npm package's `dist/` is built to be served at `/`; here it is served at `/ohif/` beside
Orthanc's `/dicom-web/`, so its public paths are rewritten, its service worker is left out (it
would precache the `/` paths), and its `app-config.js` is replaced by one for that Orthanc.
Only the package's own tarball is fetched (`npm pack`: no dependencies, no browser), and it is
checked against the registry's sha512 pinned here before anything is unpacked.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from importlib import resources
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.12.0"
# `npm view @ohif/app@3.12.0 dist.integrity`
OHIF_INTEGRITY = "sha512-D+SyPEOhW7E+P+ZfzFO1C3n8qwTfKSXExNEt2DPB5QHoLjSnUVTqEE+xaWX2B9p53boJfKWEM4b4SIVmz0qmOA=="
BASE = "/ohif/"
INSTALLED_MARK = ".hccnode-installed"


class InstallError(Exception):
    """The viewer could not be installed (npm missing, download or integrity failure)."""


def dist_dir(root: Path) -> Path:
    """Where the rewritten OHIF dist of the pinned version lives under `root` (e.g. `.viewer/`)."""
    return Path(root) / f"ohif-{OHIF_VERSION}"


def installed(root: Path) -> bool:
    return (dist_dir(root) / INSTALLED_MARK).is_file()


def install(root: Path, npm: str | None = None) -> Path:
    """The pinned OHIF dist, fetched and rewritten for `/ohif/` under `root` unless already there."""
    target = dist_dir(root)
    if installed(root):
        return target
    npm = npm or shutil.which("npm")
    if not npm:
        raise InstallError("npm is not installed (make viewer-deps installs it with apt)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--pack-destination", str(root), "--silent"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise InstallError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    tgz = root / (r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"ohif-app-{OHIF_VERSION}.tgz")
    data = tgz.read_bytes()
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != OHIF_INTEGRITY:
        raise InstallError(f"{tgz.name}: integrity {got[:24]}... is not the pinned {OHIF_INTEGRITY[:24]}...")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
        bad = [m.name for m in members if ".." in Path(m.name).parts or not (m.isfile() or m.isdir())]
        if bad:
            raise InstallError(f"{tgz.name}: unexpected entries {bad[:3]}")
        # tarfile's "data" filter exists from Python 3.11.4 (Debian 12 ships 3.11.2)
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members=members, **extra)
    dist = tmp / "package" / "dist"
    rewrite_for_base(dist)
    (dist / "app-config.js").write_text(app_config(), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    dist.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tgz.unlink()
    (target / INSTALLED_MARK).write_text(f"{OHIF_PACKAGE}@{OHIF_VERSION} {OHIF_INTEGRITY}\n")
    return target


def app_config() -> str:
    """OHIF's `app-config.js` for an Orthanc DICOMweb plugin at `/dicom-web` on the same origin."""
    return resources.files("hccnode.viewer").joinpath("app-config.js").read_text(encoding="utf-8")


def rewrite_for_base(dist: Path, base: str = BASE) -> None:
    """Point the public paths of a dist built for `/` at `base`, in place."""
    index = dist / "index.html"
    html = index.read_text(encoding="utf-8")
    html = re.sub(r'<script[^>]*init-service-worker\.js"></script>', "", html)
    html = re.sub(r'((?:href|src|content)=")/(?!/)', rf"\1{base}", html)
    html = html.replace("window.PUBLIC_URL = '/'", f"window.PUBLIC_URL = '{base}'")
    index.write_text(html, encoding="utf-8")
    for js in dist.glob("*.js"):
        text = js.read_text(encoding="utf-8", errors="surrogateescape")
        new = text.replace('__webpack_require__.p = "/";', f'__webpack_require__.p = "{base}";')
        if new != text:
            js.write_text(new, encoding="utf-8", errors="surrogateescape")
    for css in dist.glob("*.css"):
        text = css.read_text(encoding="utf-8")
        new = re.sub(r"url\(/(?!/)", f"url({base}", text)
        if new != text:
            css.write_text(new, encoding="utf-8")
    manifest = dist / "manifest.json"
    if manifest.exists():
        manifest.write_text(manifest.read_text(encoding="utf-8").replace('"/assets/', f'"{base}assets/'),
                            encoding="utf-8")
    for name in ("sw.js", "init-service-worker.js", "_redirects", "_headers", "serve.json"):
        (dist / name).unlink(missing_ok=True)
