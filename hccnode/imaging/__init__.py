"""Imaging: contrast phases, volumes, ROIs, registration and the papers' markers."""
