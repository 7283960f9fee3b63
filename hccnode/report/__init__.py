"""DICOM outputs: TID 1500 SR, ECV Parametric Map, Segmentation and the one-page summary."""
