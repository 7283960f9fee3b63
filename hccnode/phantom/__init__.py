"""Synthetic liver studies with known truth, written as real DICOM."""
