"""series_header: SeriesHeader records from pydicom datasets (standard, private, multi-frame)."""

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hccnode.imaging.phase_rules import load_rules
from hccnode.imaging.series_header import header_from_datasets, parse_time

TAGS = load_rules().b_value_tags


def mr(**kw):
    ds = Dataset()
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = "1.2", "1", "MR"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_standard_b_value():
    h = header_from_datasets([mr(DiffusionBValue=50.0), mr(DiffusionBValue=800.0)], TAGS)
    assert h.b_values == (50.0, 800.0)


def test_ge_private_b_value_with_bias():
    ds = mr(Manufacturer="GE MEDICAL SYSTEMS")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", ["1000000800", "8", "0", "0"])
    assert header_from_datasets([ds], TAGS).b_values == (800.0,)


def test_siemens_private_b_value_and_sequence_name():
    ds = mr(Manufacturer="SIEMENS")
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "50")
    assert header_from_datasets([ds], TAGS).b_values == (50.0,)
    assert header_from_datasets([mr(SequenceName="*ep_b800t")], TAGS).b_values == (800.0,)


def test_enhanced_multiframe_frame_type_times_and_multienergy():
    ds = Dataset()
    ds.SeriesInstanceUID, ds.Modality, ds.NumberOfFrames = "1.3", "CT", 2
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "VMI"]
    frames = []
    for t in ("20260101083000.5", "20260101083001.5"):
        fg = Dataset()
        fc = Dataset()
        fc.FrameAcquisitionDateTime = t
        fg.FrameContentSequence = Sequence([fc])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    shared = Dataset()
    me = Dataset()
    me.MonoenergeticEnergyEquivalent = 40.0
    shared.MultienergyCTCharacteristicsSequence = Sequence([me])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    h = header_from_datasets([ds], TAGS)
    assert h.kev == 40.0 and "VMI" in h.image_type and h.frame_count == 2
    assert h.acquisition_s == parse_time("083000.5", "20260101")


def test_content_time_only_for_original_images():
    ct = Dataset()
    ct.SeriesInstanceUID, ct.Modality, ct.ContentTime = "1.4", "CT", "090000"
    ct.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    assert header_from_datasets([ct]).acquisition_s is None
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert header_from_datasets([ct]).acquisition_s == 9 * 3600


def test_parse_time_forms():
    assert parse_time("083015.25") == 8 * 3600 + 30 * 60 + 15.25
    assert parse_time("08:30:15") == 8 * 3600 + 30 * 60 + 15
    assert parse_time("bad") is None and parse_time("256000") is None


from hypothesis import given, strategies as st


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999999))
def test_parse_time_round_trip(h, m, s, us):
    text = f"{h:02d}{m:02d}{s:02d}.{us:06d}"
    assert parse_time(text) == pytest.approx(h * 3600 + m * 60 + s + us / 1e6)
    assert parse_time(text, "20260102") - parse_time(text, "20260101") == 86400


@given(st.text(max_size=30))
def test_parse_time_never_raises(text):
    v = parse_time(text)
    assert v is None or 0 <= v < 86401


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_numbers_do_not_stop_a_series():
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    ds = mr()
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"x7", 0, True, True)
    ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 4, b"abc ", 0, True, True)
    h = header_from_datasets([ds], TAGS)
    assert h.series_number is None and h.frame_count == 1



def _me_ct(uid, value4, material=None, kev=None):
    """A CT header written the PS3.3 multi-energy way (Image Type value 4, characteristics, materials)."""
    ds = Dataset()
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = uid, "1", "CT"
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL", value4]
    ds.MultienergyCTAcquisition = "YES"
    if kev is not None:
        ch = Dataset()
        ch.MonoenergeticEnergyEquivalent = kev
        ds.MultienergyCTCharacteristicsSequence = Sequence([ch])
    if material is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = material
        m = Dataset()
        m.MaterialCodeSequence = Sequence([code])
        item = Dataset()
        item.DecompositionMaterialSequence = Sequence([m])
        ds.MultienergyCTProcessingSequence = Sequence([item])
    return ds


def test_standard_multienergy_headers_to_kinds():
    from hccnode.imaging.phases import classify_study
    iodine, calcium = ("44588005", "SCT", "Iodine"), ("5540006", "SCT", "Calcium")   # CID 300 materials
    series = {
        "1.5.1": (_me_ct("1.5.1", "VMI", kev=50.0), "dect_vmi"),
        "1.5.2": (_me_ct("1.5.2", "MAT_SPECIFIC", iodine), "dect_iodine"),
        # keV of the VMI a material-removed image was made from (PS3.3 C.8.15.3.12) is not a VMI
        "1.5.3": (_me_ct("1.5.3", "MAT_REMOVED", iodine, kev=70.0), "dect_vnc"),
        "1.5.4": (_me_ct("1.5.4", "MAT_SPECIFIC", calcium), "other"),
        "1.5.5": (_me_ct("1.5.5", "MAT_VALUE_BASED"), "other"),
        "1.5.6": (_me_ct("1.5.6", "EFF_ATOMIC_NUM"), "other"),
        # a localised code meaning: the CID 300 code value still says iodine
        "1.5.7": (_me_ct("1.5.7", "MAT_SPECIFIC", ("44588005", "SCT", "Jod")), "dect_iodine"),
    }
    hs = [header_from_datasets([ds], TAGS) for ds, _ in series.values()]
    by_uid = {h.series_uid: h for h in hs}
    assert by_uid["1.5.3"].kev == 70.0 and by_uid["1.5.1"].multienergy
    assert by_uid["1.5.2"].materials == ("Iodine", "SCT:44588005")
    got = {d.series_uid: d for d in classify_study(hs, load_rules())}
    assert {u: got[u].kind for u in series} == {u: k for u, (_, k) in series.items()}
    assert got["1.5.1"].kev == 50.0
