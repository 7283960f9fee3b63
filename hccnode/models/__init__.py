"""Published response models as model cards, one engine to evaluate them, validation and recalibration."""
