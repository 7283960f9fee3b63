import re
import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hccnode.report.uids import mask_digest, uid_from


def test_uid_is_a_valid_2_25_uuid_uid():
    uid = uid_from("a", 1)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    u = uuid.UUID(int=int(uid.split(".")[2]))
    assert u.version == 5 and u.variant == uuid.RFC_4122


def test_same_parts_same_uid_and_any_change_gives_a_new_one():
    base = {"sources": ["1.2.3", "1.2.4"], "labs": [{"name": "hct", "value": 0.40}]}
    assert uid_from(base, "sr") == uid_from({"labs": [{"value": 0.40, "name": "hct"}], "sources": ["1.2.3", "1.2.4"]}, "sr")
    assert uid_from(base, "sr") != uid_from(base, "seg")
    changed = {"sources": ["1.2.3", "1.2.4"], "labs": [{"name": "hct", "value": 0.41}]}
    assert uid_from(base, "sr") != uid_from(changed, "sr")


def test_mask_digest_tracks_mask_content():
    m = np.zeros((2, 4, 4), bool)
    m2 = m.copy()
    m2[1, 2, 3] = True
    assert mask_digest(m) == mask_digest(m.copy())
    assert mask_digest(m) != mask_digest(m2)
    assert mask_digest(m) != mask_digest(np.zeros((2, 2, 8), bool))
    assert uid_from(m) != uid_from(m2)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_any_json_parts_give_a_valid_uid(parts):
    uid = uid_from(parts)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert uid == uid_from(parts)


def test_numpy_scalars_count_as_their_value():
    assert uid_from({"n": np.int64(3), "x": np.float32(0.5)}) == uid_from({"n": 3, "x": 0.5})


def test_unsupported_part_is_refused():
    with pytest.raises(TypeError, match="cannot derive a UID from a object"):
        uid_from(object())
