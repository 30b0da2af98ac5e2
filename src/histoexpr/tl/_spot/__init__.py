"""The spot regressor: routes, fit and predict, automatic route choice, the HEST protocol."""
