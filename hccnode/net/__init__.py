"""DICOM networking: the Storage SCP (receive) and the C-STORE/C-ECHO SCU (send)."""
