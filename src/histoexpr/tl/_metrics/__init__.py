"""Scores of segmentations, expression and classes; imports nothing else from histoexpr.tl."""
