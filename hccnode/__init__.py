"""hccnode: a DICOM node for liver cancer imaging research.

Research measurements and published models only; not a diagnosis.
"""

__version__ = "0.2.0"

RESEARCH_USE = (
    "Research use only. These are research measurements and published models, "
    "not a diagnosis."
)
