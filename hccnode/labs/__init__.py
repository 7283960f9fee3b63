"""Labs: HL7 v2 over MLLP and CSV, unit normalisation, matching to scans, derived indices."""
