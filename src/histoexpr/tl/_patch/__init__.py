"""The patch classifier: fit and predict, dense class maps, per-cell maps, cell morphology."""
