"""`hccnode viewer check`: the node's results as OHIF shows them, in headless Chromium.

The study (sent by hccnode.viewer.stack) is opened in OHIF; the SR, the SEG, the Parametric Map and
the PDF are displayed in turn by double-clicking their thumbnails, as a radiologist would. What the
page shows is read back and set against what the node wrote:

- SR: the measurement panel's count and rows, and the text OHIF draws on the images (SVG; the
  viewport's arrows step through the measurements), against every NUM of our SR's measurement
  groups that refer to an image (label, value, unit; the other groups are listed). A value counts
  as shown when a line on the page names its label and a number on it equals the value to the
  decimals the page prints.
- SEG: the segment names in the segmentation panel against our SEG's segment labels.
- Map: whether OHIF loaded it and added it to the viewport, and the value OHIF holds at a probed
  point in the liver (the phantom's liver ROI centre) against our map's value there. OHIF 3.12
  multiplies map values by 100 for display (it says so in a notification); the comparison divides
  that back out and the result keeps both numbers.
- PDF: whether the viewer embedded a document that is a PDF (its first bytes read in the page).
- Every console error (and warnings, counted), per step.

Writes OUT/result.json and OUT/NN-step.png; `passed` is true only when all four displayed and the
values agree.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000",
                  # WebGL without a GPU: ANGLE on SwiftShader (OHIF's viewports are WebGL). Measured with
                  # Debian's chromium 156: with these, with either half, or with none, WebGL2 runs on
                  # "ANGLE (Vulkan, SwiftShader)" and cornerstone does not fall back to CPU rendering;
                  # they are kept so a chromium that stops falling back silently still gets it.
                  "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader")
MEASUREMENT_GROUP = "125007"      # DCM "Measurement Group" (TID 1501)
TRACKING_ID = "112039"            # DCM "Tracking Identifier"
TRACKING_UID = "112040"           # DCM "Tracking Unique Identifier": OHIF makes one measurement per UID
STEP_SECONDS = 45                 # how long one object may take to appear on a loaded machine


class CheckError(Exception):
    """The browser could not be started or the page never came up."""


@dataclass
class Expected:
    """What the node wrote, read from its objects in Orthanc."""
    measurements: list[dict] = field(default_factory=list)   # {group, label, value, unit} on images
    segments: list[str] = field(default_factory=list)
    map_point_mm: list[float] | None = None
    map_value: float | None = None
    map_unit: str | None = None
    not_on_images: list[dict] = field(default_factory=list)  # the same, of groups with no image reference
    sr_tracked: int = 0                                        # measurements OHIF makes of the SR (tracking UIDs)
    series: dict[str, str] = field(default_factory=dict)      # {"sr"|"seg"|"pmap"|"pdf": series description}
    map_real: float | None = None                              # map_value through the map's RWVM, in map_unit


# -- what we wrote -----------------------------------------------------------------------------
def sr_measurements(ds) -> list[dict]:
    """Every NUM directly under a TID 1501 measurement group: its group's tracking identifier,
    concept name, value and unit, and whether the group refers to an image (a SCOORD/SCOORD3D,
    or an IMAGE item such as the Referenced Segment): only those can be drawn on an image."""
    out = []

    def walk(items):
        for item in items or []:
            if item.get("ValueType") == "CONTAINER" and _code(item) == MEASUREMENT_GROUP:
                group = next((str(c.TextValue) for c in item.get("ContentSequence", [])
                              if c.get("ValueType") == "TEXT" and _code(c) == TRACKING_ID), "")
                on_image = any(c.get("ValueType") in ("SCOORD", "SCOORD3D", "IMAGE")
                               for c in item.get("ContentSequence", []))
                for c in item.get("ContentSequence", []):
                    if c.get("ValueType") == "NUM" and c.get("MeasuredValueSequence"):
                        mv = c.MeasuredValueSequence[0]
                        out.append({"group": group, "label": str(c.ConceptNameCodeSequence[0].CodeMeaning),
                                    "value": float(mv.NumericValue),
                                    "unit": str(mv.MeasurementUnitsCodeSequence[0].CodeValue),
                                    "on_image": on_image})
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return out


def tracking_uids(ds) -> set[str]:
    """The Tracking Unique Identifiers of the SR's measurement groups (OHIF 3.12 merges groups by
    this UID into one measurement, and its viewport arrows step through those)."""
    out = set()

    def walk(items):
        for item in items or []:
            if item.get("ValueType") == "CONTAINER" and _code(item) == MEASUREMENT_GROUP:
                out.update(str(c.UID) for c in item.get("ContentSequence", [])
                           if c.get("ValueType") == "UIDREF" and _code(c) == TRACKING_UID)
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return out


def _code(item) -> str | None:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else None


def segment_labels(ds) -> list[str]:
    return [str(s.SegmentLabel) for s in ds.SegmentSequence]


def map_value_at(ds, point_mm) -> tuple[float, list[float]]:
    """Our map's stored value at the voxel nearest a patient-coordinate point, and that voxel's
    centre (so a viewer probing it lands on the same voxel, not on a boundary)."""
    frames = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]   # row, column
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    p = np.asarray(point_mm, dtype=float)
    ipps = [np.array([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]) for f in frames]
    k = int(np.argmin([abs(float(np.dot(p - ipp, normal))) for ipp in ipps]))
    d = p - ipps[k]
    col = int(round(float(np.dot(d, row_dir)) / spacing[1]))
    row = int(round(float(np.dot(d, col_dir)) / spacing[0]))
    centre = ipps[k] + col * spacing[1] * row_dir + row * spacing[0] * col_dir
    pixels = ds.pixel_array.reshape(len(frames), int(ds.Rows), int(ds.Columns))
    return float(pixels[k, row, col]), [round(float(v), 4) for v in centre]


def number_shown(value: float, numbers: list[str]) -> str | None:
    """The first printed number equal to `value` to the decimals it is printed with; a number
    printed without decimals counts only for a whole `value` (page counters are integers)."""
    for text in numbers:
        decimals = len(text.split(".")[1]) if "." in text else 0
        if decimals == 0 and value != int(value):
            continue
        if abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9:
            return text
    return None


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# -- the browser --------------------------------------------------------------------------------
def browser(profile: Path):
    """Debian's chromium driven by Debian's chromedriver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise CheckError("chromium and chromedriver are needed (make viewer-deps installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=opts, service=Service(driver))
    except WebDriverException as exc:
        raise CheckError(f"chromium could not be started through chromedriver: {exc.msg or 'no message'}") from None


class Page:
    """OHIF in one browser tab, with the helpers the steps share."""

    def __init__(self, driver, out: Path):
        self.d = driver
        self.out = out
        self.shots: dict[str, str] = {}

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def wait(self, predicate, seconds: float = STEP_SECONDS):
        deadline = time.monotonic() + seconds
        while True:
            try:
                value = predicate()
            except Exception:   # the page is re-rendering under us: try again
                value = None
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.5)

    def console(self) -> dict:
        """Console entries since the last call: every error, warnings counted by message."""
        errors, warnings = [], {}
        for e in self.d.get_log("browser"):
            msg = e.get("message", "")
            if e.get("level") == "SEVERE":
                errors.append(msg)
            elif e.get("level") == "WARNING" and "GPU stall" not in msg:
                warnings[msg] = warnings.get(msg, 0) + 1
        return {"errors": errors, "warnings": [{"message": m, "count": n} for m, n in warnings.items()]}

    def shot(self, name: str, what: str) -> None:
        path = self.out / f"{name}.png"
        self.d.save_screenshot(str(path))
        self.shots[path.name] = what

    def skip_tour(self) -> None:
        for b in self.d.find_elements("xpath", "//*[text()='Skip all']"):
            try:
                b.click()
            except Exception:
                pass

    def open_thumbnail(self, description: str) -> bool:
        from selenium.webdriver.common.action_chains import ActionChains
        labels = [e for e in self.d.find_elements("css selector", '[data-cy="series-description-label"]')
                  if (e.get_attribute("textContent") or "").strip() == description]
        if not labels:
            return False
        self.skip_tour()
        ActionChains(self.d).double_click(labels[0]).perform()
        return True

    def hover(self, css: str) -> bool:
        from selenium.webdriver.common.action_chains import ActionChains
        found = [e for e in self.d.find_elements("css selector", css) if e.is_displayed()]
        if found:
            ActionChains(self.d).move_to_element(found[0]).perform()
            time.sleep(1)
        return bool(found)

    def panel(self, button: str) -> str:
        """Open a right-hand panel (data-cy of its tab button) and return its text."""
        for b in self.d.find_elements("css selector", f'[data-cy="{button}"]'):
            try:
                b.click()
            except Exception:
                pass
        time.sleep(1)
        return self.js("var h = document.querySelector('[data-cy=side-panel-header-right]');"
                       "return h ? h.parentElement.parentElement.innerText : '';") or ""

    def viewport_text(self) -> list[str]:
        """The text OHIF draws on the viewport: overlays and annotation labels (SVG text)."""
        return self.js("var v = document.querySelector('[data-cy=viewport-pane]'); if (!v) return [];"
                       "return Array.from(v.querySelectorAll('svg tspan, svg text'))"
                       ".filter(function (t) { return !t.querySelector('tspan'); })"
                       ".map(function (t) { return t.textContent; }).filter(Boolean);") or []


# -- the steps --------------------------------------------------------------------------------------
NEXT_MEASUREMENT_JS = """
var v = document.querySelector('[data-cy=viewport-pane]');
var next = v && Array.from(v.querySelectorAll('svg.rotate-180')).find(function (g) {
  var t = g.querySelector('title'); return t && t.textContent === 'arrow-left'; });
if (!next) return false;
// React's handler is on the <svg> itself (ViewportActionArrows: Icons.ArrowRightBold onClick), so the
// click is dispatched there; a click on its <div> never reaches it (an event does not go down).
next.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true, view: window}));
return true;
"""


def check_sr(page: Page, exp: Expected) -> dict:
    """OHIF draws an SR's measurements on their image (one image at a time; the viewport's arrows
    step through them) and lists tracked ones in the measurement panel: both are read."""
    opened = page.open_thumbnail(exp.series["sr"])
    page.wait(lambda: "Measurements (" in page.panel("trackedMeasurements-btn"), 20)
    page.wait(lambda: page.viewport_text(), 15)
    lines = set(page.viewport_text())
    shot = "the SR opened from its thumbnail, measurement panel open: the image with the most SR text"
    most = len(lines)
    page.shot("02-sr", shot)
    for _ in range(exp.sr_tracked):
        if not page.js(NEXT_MEASUREMENT_JS):
            break
        time.sleep(1.5)
        now = page.viewport_text()
        lines |= set(now)
        if len(now) > most:
            most = len(now)
            page.shot("02-sr", shot)
    panel = page.panel("trackedMeasurements-btn")
    m = re.search(r"Measurements \((\d+)\)", panel)
    shown_count = int(m.group(1)) if m else None
    rows = [line for line in panel.splitlines()[1:] if line.strip()]
    texts = sorted(lines) + rows
    compared = []
    for e in exp.measurements:
        line = next((t for t in texts if e["label"] in t and number_shown(e["value"], NUMBER.findall(t))), None)
        compared.append({**e, "shown": number_shown(e["value"], NUMBER.findall(line)) if line else None,
                         "page_line": line})
    agree = bool(compared) and all(c["shown"] is not None for c in compared)
    return {"thumbnail_found": opened, "panel_count": shown_count, "panel_rows": rows,
            "viewport_text": sorted(lines), "measurements": compared, "ours": len(compared),
            "shown": sum(c["shown"] is not None for c in compared),
            "not_on_images": exp.not_on_images, "displayed": agree, "values_agree": agree,
            "console": page.console()}


def check_seg(page: Page, exp: Expected) -> dict:
    opened = page.open_thumbnail(exp.series["seg"])
    panel = page.wait(lambda: (lambda t: t if all(s in t for s in exp.segments) else None)(
        page.panel("panelSegmentation-btn"))) or page.panel("panelSegmentation-btn")
    time.sleep(2)
    page.shot("03-seg", "our SEG opened from its thumbnail, segmentation panel open")
    listed = [s for s in exp.segments if s in panel]
    return {"thumbnail_found": opened, "panel_text": panel, "ours": exp.segments, "listed": listed,
            "displayed": bool(exp.segments) and len(listed) == len(exp.segments), "console": page.console()}


PROBE_JS = """
var uid = arguments[0], p = arguments[1];
var ds = window.services.displaySetService.getActiveDisplaySets()
  .filter(function (d) { return d.SeriesInstanceUID === uid; })[0];
if (!ds) return {state: 'no display set'};
var vol = window.cornerstone.cache.getVolume(ds.displaySetInstanceUID);
var loading = !!Array.from(document.querySelectorAll('*')).find(function (e) {
  return e.childElementCount === 0 && /Loading Parametric Map/.test(e.textContent); });
if (!vol) return {state: loading ? 'loading' : 'no volume', loading: loading, loaded: !!ds.isLoaded};
var inViewport = window.cornerstone.getRenderingEngines().some(function (re) {
  return re.getViewports().some(function (vp) {
    return (vp.getActors ? vp.getActors() : []).some(function (a) {
      return a.referencedId === ds.displaySetInstanceUID || a.uid === ds.displaySetInstanceUID; }); }); });
var ijk = window.cornerstone.utilities.transformWorldToIndex(vol.imageData, p).map(Math.round);
var value = vol.voxelManager.getAtIJK(ijk[0], ijk[1], ijk[2]);
var column = [];
for (var k = 0; k < vol.dimensions[2]; k++) column.push(vol.voxelManager.getAtIJK(ijk[0], ijk[1], k));
return {state: 'loaded', loading: loading, in_viewport: inViewport, ijk: ijk, value: value,
        dimensions: vol.dimensions, first_slice_mm: vol.imageData.indexToWorld([0, 0, 0]),
        last_slice_mm: vol.imageData.indexToWorld([0, 0, vol.dimensions[2] - 1]), column_at_ij: column};
"""


COLORBAR_JS = """
var uid = arguments[0], s = window.services;
var ds = s.displaySetService.getActiveDisplaySets().filter(function (d) { return d.SeriesInstanceUID === uid; })[0];
var vp = s.viewportGridService.getActiveViewportId();
if (!ds || !vp) return {shown: false};
var props = s.customizationService.getCustomization('cornerstone.colorbar') || {};
if (!s.colorbarService.hasColorbar(vp))
  window.commandsManager.run('toggleViewportColorbar', {viewportId: vp, displaySetInstanceUIDs: [ds.displaySetInstanceUID],
    options: {viewportId: vp, colormaps: props.colormaps || {}, width: props.width, position: 'bottom',
              ticks: {position: 'top'}, activeColormapName: props.colorbarInitialColormap || 'Grayscale'}});
var bars = s.colorbarService.getViewportColorbar ? s.colorbarService.getViewportColorbar(vp) : null;
return {shown: s.colorbarService.hasColorbar(vp),
        colormaps: (bars || []).map(function (b) { return b.colorbar && b.colorbar.activeColormapName; })};
"""


def check_map(page: Page, exp: Expected, pmap_series: str) -> dict:
    opened = page.open_thumbnail(exp.series["pmap"])
    probe = page.wait(lambda: (lambda r: r if r and r.get("state") == "loaded" and not r.get("loading") else None)(
        page.js(PROBE_JS, pmap_series, exp.map_point_mm))) or page.js(PROBE_JS, pmap_series, exp.map_point_mm)
    time.sleep(3)
    notes = page.js("return Array.from(document.querySelectorAll('[data-sonner-toast], .toast, [role=status]'))"
                    ".map(function (e) { return e.innerText; })") or []
    # OHIF shows no legend of its own; its viewport colour bar (what the viewport menu's "Display
    # Color bar" turns on) drawn for the map, as a reader would ask for it
    colorbar = page.js(COLORBAR_JS, pmap_series) if probe and probe.get("state") == "loaded" else {"shown": False}
    time.sleep(2)
    colorbar["ticks_hovered"] = page.hover('[id^="colorbar-container-"]')   # its values show under the pointer
    page.shot("04-map", "the ECV map opened from its thumbnail (OHIF fuses it over its referenced series), "
                        "with OHIF's colour bar turned on for it")
    drew = bool(probe and probe.get("state") == "loaded" and probe.get("in_viewport"))
    ohif = probe.get("value") if probe else None
    ohif_scale = 100.0   # OHIF 3.12 _loadParametricMap: newPixelData[i] = pixelData[i] * 100
    agree = (drew and ohif is not None and exp.map_value is not None
             and abs(ohif / ohif_scale - exp.map_value) <= 1e-3 * max(1.0, abs(exp.map_value)))
    return {"thumbnail_found": opened, "probe": probe, "point_mm": exp.map_point_mm, "ours": exp.map_value,
            "ours_real": exp.map_real, "unit": exp.map_unit, "ohif_value": ohif, "ohif_scale": ohif_scale,
            "ohif_value_unscaled": None if ohif is None else ohif / ohif_scale, "notifications": notes,
            "colorbar": colorbar,
            "displayed": drew, "values_agree": bool(agree), "console": page.console()}


PDF_JS = """
var done = arguments[arguments.length - 1];
var el = document.querySelector('[data-cy=viewport-pane] object, [data-cy=viewport-pane] iframe,'
                                + ' [data-cy=viewport-pane] embed');
if (!el) { done({embedded: false}); return; }
var src = el.getAttribute('data') || el.getAttribute('src') || '';
fetch(src).then(function (r) { return r.arrayBuffer().then(function (b) {
  var head = String.fromCharCode.apply(null, new Uint8Array(b.slice(0, 5)));
  done({embedded: true, tag: el.tagName, type: el.getAttribute('type'), bytes: b.byteLength, head: head}); }); })
  .catch(function (e) { done({embedded: true, tag: el.tagName, error: String(e)}); });
"""


def check_pdf(page: Page, exp: Expected) -> dict:
    opened = page.open_thumbnail(exp.series["pdf"])
    page.wait(lambda: page.js("return !!document.querySelector('[data-cy=viewport-pane] object,"
                              "[data-cy=viewport-pane] iframe, [data-cy=viewport-pane] embed')"))
    time.sleep(3)
    info = page.d.execute_async_script(PDF_JS)
    page.shot("05-pdf", "the summary PDF opened from its thumbnail")
    return {"thumbnail_found": opened, **info, "displayed": bool(info.get("embedded") and info.get("head") == "%PDF-"),
            "console": page.console()}


# -- the whole check --------------------------------------------------------------------------------
def expected_from(stack, study) -> Expected:
    """Our values, from our objects as Orthanc holds them. The SR to open is the node's SR with
    measurements on images (the node may write a second SR for what has no image)."""
    found = [(m, ds) for key, uid in sorted(study.results.items()) if key.rstrip("0123456789") == "sr"
             for ds in [pydicom.dcmread(stack.instance_file(uid))] for m in [sr_measurements(ds)]]
    measurements, sr = next(((m, ds) for m, ds in found if any(x["on_image"] for x in m)), found[0])
    others = [x for m, ds in found if ds is not sr for x in m]
    seg = pydicom.dcmread(stack.instance_file(study.results["seg"]))
    pmap = pydicom.dcmread(stack.instance_file(study.results["pmap"]))
    pdf = pydicom.dcmread(stack.instance_file(study.results["pdf"]), stop_before_pixels=True)
    truth = json.loads((study.folder / "truth.json").read_text())
    point = truth["studies"][0]["rois"]["liver"]["roi_centers_patient_mm"][0]
    rwvm = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    value, voxel = map_value_at(pmap, point)
    real = value * float(rwvm.get("RealWorldValueSlope", 1)) + float(rwvm.get("RealWorldValueIntercept", 0))
    return Expected([x for x in measurements if x["on_image"]], segment_labels(seg), voxel, value,
                    str(rwvm.MeasurementUnitsCodeSequence[0].CodeValue),
                    [x for x in measurements if not x["on_image"]] + others, len(tracking_uids(sr)),
                    {k: str(ds.get("SeriesDescription", "")) for k, ds in
                     (("sr", sr), ("seg", seg), ("pmap", pmap), ("pdf", pdf))}, real)


def run(stack, study, out: Path) -> dict:
    """Open `study` (sent through `stack`) in OHIF, check the four objects, write OUT/result.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    exp = expected_from(stack, study)
    pmap_series = stack.series_of(study.results["pmap"])
    url = stack.study_url(study.study_uid)
    result: dict = {"url": url, "ohif": stack.ohif_version(), "orthanc": stack.versions()}
    profile = Path(tempfile.mkdtemp(prefix="hccnode-chromium-"))    # a fresh --user-data-dir
    driver = None
    try:
        driver = browser(profile)
        page = Page(driver, out)
        driver.get(url)
        if not page.wait(lambda: len(driver.find_elements("css selector", '[data-cy="series-description-label"]')) >= 5,
                         90):
            page.shot("01-study", "the study page (it never listed the series)")
            raise CheckError(f"OHIF did not list the study's series at {url}")
        page.wait(lambda: page.js("return !!document.querySelector('[data-cy=viewport-pane] canvas')"), 60)
        time.sleep(3)
        page.skip_tour()
        page.shot("01-study", "the study opened: series thumbnails and the first CT series")
        result["study"] = {"console": page.console()}
        result["sr"] = check_sr(page, exp)
        result["seg"] = check_seg(page, exp)
        result["map"] = check_map(page, exp, pmap_series)
        result["pdf"] = check_pdf(page, exp)
        result["screenshots"] = page.shots
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    result["passed"] = all(result[k]["displayed"] for k in ("sr", "seg", "map", "pdf")) \
        and result["sr"]["values_agree"] and result["map"]["values_agree"]
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def summary(result: dict) -> list[str]:
    """One line per object for the terminal."""
    sr, seg, mp, pdf = (result.get(k, {}) for k in ("sr", "seg", "map", "pdf"))
    return [
        f"SR:   {'displayed' if sr.get('displayed') else 'NOT displayed'}: panel 'Measurements "
        f"({sr.get('panel_count')})', {sr.get('shown')} of our {sr.get('ours')} values found on the page",
        f"SEG:  {'displayed' if seg.get('displayed') else 'NOT displayed'}: listed {seg.get('listed')} of {seg.get('ours')}",
        f"Map:  {'displayed' if mp.get('displayed') else 'NOT displayed'} ({(mp.get('probe') or {}).get('state')}): "
        f"OHIF {mp.get('ohif_value')} (/{mp.get('ohif_scale'):g} = {mp.get('ohif_value_unscaled')}) vs our stored "
        f"{mp.get('ours')} (= {mp.get('ours_real')} {mp.get('unit')} through its RWVM) at {mp.get('point_mm')} mm",
        f"PDF:  {'displayed' if pdf.get('displayed') else 'NOT displayed'} ({pdf.get('tag')}, {pdf.get('bytes')} bytes)",
        "console errors: " + ", ".join(f"{k} {len(result.get(k, {}).get('console', {}).get('errors', []))}"
                                       for k in ("study", "sr", "seg", "map", "pdf")),
        f"passed: {result.get('passed')}",
    ]
