"""Slide-level bag models: bags, ABMIL, mean-pool ridge and logistic, CV, attention check."""
