import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pydicom
import pytest
from report_support import dciodvfy, shared_case, shared_outputs

import hccnode
from hccnode.report import Reference
from hccnode.report.summary import ENCAPSULATED_PDF, encapsulate_pdf, image_label, key_slices, render


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    return shared_outputs(tmp_path_factory)


def test_encapsulated_pdf_is_valid_and_holds_the_pdf(outputs):
    errors, warnings = dciodvfy(outputs["pdf"])
    assert errors == [] and warnings == []
    ds = pydicom.dcmread(outputs["pdf"])
    assert ds.SOPClassUID == ENCAPSULATED_PDF and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    pdf = (outputs["pdf"].parent / "summary.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:]
    assert int(ds.EncapsulatedDocumentLength) == len(pdf)
    assert bytes(ds.EncapsulatedDocument)[:len(pdf)] == pdf
    assert ds.BurnedInAnnotation == "NO"


def test_pdf_is_in_the_source_study_and_references_its_key_images(case, outputs):
    ds = pydicom.dcmread(outputs["pdf"])
    ref = case.reference[0]
    assert ds.StudyInstanceUID == ref.StudyInstanceUID and ds.PatientID == ref.PatientID
    shown = {case.reference[k].SOPInstanceUID for k in key_slices(case.rois)}
    assert {i.ReferencedSOPInstanceUID for i in ds.SourceInstanceSequence} == shown


def test_png_of_the_page_is_a_nonempty_image(outputs):
    png = outputs["pdf"].parent / "summary.png"
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 800 and img.shape[1] > 600
    assert float(img[..., :3].std()) > 0.05  # not a blank page


def test_key_slices_show_the_largest_tumor_section_first(case):
    tumor = next(r for r in case.rois if r.ref.name == "tumor").mask
    slices = key_slices(case.rois)
    assert slices[0] == int(np.argmax(tumor.sum(axis=(1, 2))))
    assert len(slices) == 2 and slices[1] != slices[0]
    assert key_slices([r for r in case.rois if r.ref.name != "tumor"])  # reference ROIs alone still shown
    assert key_slices([]) == []


def test_key_images_are_named_as_the_viewer_shows_them(case):
    ref = Reference(case.reference)
    k = key_slices(case.rois)[0]
    ds = case.reference[k]
    assert image_label(ref, k) == f"series {ds.SeriesNumber}, image {ds.InstanceNumber}"
    fig = render(case.rois, [], [], [], [], [], images=case.images, reference=ref)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert titles[0] == image_label(ref, k)


def test_only_a_pdf_is_encapsulated(case):
    with pytest.raises(ValueError, match="not a PDF"):
        encapsulate_pdf(b"PNG....", case.reference[0], Reference(case.reference), [], "2.25.1", "2.25.2", 1, "x")


def test_page_states_research_use_measurements_models_and_what_is_missing(case):
    fig = render(case.rois, [], case.measurements, case.model_results, case.labs, ["tumor: no reader annotation"])
    text = "\n".join(t.get_text() for t in fig.texts)
    plt.close(fig)
    assert hccnode.RESEARCH_USE in text
    assert "Tumor ECV, unenhanced + equilibrium: " in text and "(paper 001" in text
    for r in case.model_results:
        assert f"(card {r['card_id']} {r['card_version']}): " in " ".join(text.split())
        assert r["citation"][:60] in text and r["paper"] not in text   # the citation, never the file name
    assert "tumor: no reader annotation" in text
    assert "Tumor NIC not measured: no iodine map" in text
