"""The spot regressor's ridge route (scikit-learn) gives the numbers of the closed form."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold, LeaveOneGroupOut

from histoexpr.tl._metrics._expression_metrics import column_pearson
from histoexpr.tl._spot._spot_training import fit_ridge


def _closed_form(features, targets, alphas, n_components):
    """Standardise, PCA by SVD, ridge by SVD, alpha by inner CV: written out in numpy."""
    x, y = np.vstack(features), np.vstack(targets)
    groups = np.repeat(np.arange(len(features)), [len(f) for f in features])

    def prepare(train):
        mean, scale = train.mean(axis=0), train.std(axis=0)
        scale = np.where(scale > 0, scale, 1)
        projection = np.eye(train.shape[1])
        if n_components is not None:
            projection = np.linalg.svd((train - mean) / scale, full_matrices=False)[2]
            projection = projection[:n_components].T
        return mean, scale, projection

    def ridge(t, y_train, alpha):
        t_mean, y_mean = t.mean(axis=0), y_train.mean(axis=0)
        u, s, vt = np.linalg.svd(t - t_mean, full_matrices=False)
        coef = vt.T @ ((s / (s**2 + alpha))[:, None] * (u.T @ (y_train - y_mean)))
        return coef, y_mean - t_mean @ coef

    if len(features) > 1:
        splits = LeaveOneGroupOut().split(groups, groups=groups)
    else:
        splits = KFold(5, shuffle=True, random_state=0).split(groups)
    scores = np.zeros(len(alphas))
    for train, test in splits:
        mean, scale, projection = prepare(x[train])
        t_train = ((x[train] - mean) / scale) @ projection
        t_test = ((x[test] - mean) / scale) @ projection
        for i, alpha in enumerate(alphas):
            coef, bias = ridge(t_train, y[train], alpha)
            scores[i] += np.nanmean(column_pearson(t_test @ coef + bias, y[test]))
    alpha = alphas[int(np.flatnonzero(scores >= scores.max() - 1e-9)[0])]
    mean, scale, projection = prepare(x)
    coef, bias = ridge(((x - mean) / scale) @ projection, y, alpha)
    weight = (projection @ coef) / scale[:, None]
    return alpha, weight, bias - mean @ weight


@pytest.mark.parametrize(("n_sections", "n_components"), [(3, None), (3, 5), (1, None), (1, 4)])
def test_ridge_route_matches_the_closed_form(n_sections, n_components):
    rng = np.random.default_rng(n_sections + (n_components or 0))
    features, targets = [], []
    for _ in range(n_sections):
        x = rng.normal(size=(60, 12)) * rng.uniform(0.5, 3, 12) + rng.normal(size=12)
        x[:, 3] = 2.0  # a constant feature
        y = x[:, :4] @ rng.normal(size=(4, 3)) + rng.normal(scale=2.0, size=(60, 3))
        features.append(x)
        targets.append(y)
    alphas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    network, extra = fit_ridge(features, targets, alphas=alphas, n_components=n_components)
    alpha, weight, bias = _closed_form(features, targets, alphas, n_components)
    assert extra["alpha"] == alpha
    np.testing.assert_allclose(network.weight.detach().numpy(), weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(network.bias.detach().numpy(), bias, rtol=1e-5, atol=1e-5)


def test_ties_up_to_rounding_take_the_smallest_penalty():
    from histoexpr.tl._spot._spot_training import _first_best

    scores = np.array([-0.07, 0.2 - 5e-17, 0.2, 0.2 - 5e-17, 0.07, np.nan])
    assert _first_best(scores) == 1
    assert _first_best(np.array([np.nan, 0.1, 0.3])) == 2


@pytest.mark.parametrize(("n_features", "n_components", "n_groups"),
                         [(300, None, 2), (60, None, 3), (80, 10, 2), (40, None, 1)])
def test_ridge_penalties_score_as_scikit_learns_grid_search_bit_for_bit(n_features, n_components,
                                                                       n_groups):
    import warnings

    from sklearn.model_selection import GridSearchCV

    from histoexpr.tl._spot import _spot_training as training
    from histoexpr.tl._spot._options import RidgeRouteOptions

    rng = np.random.default_rng(n_features)
    x = rng.normal(size=(120, n_features)) * rng.uniform(0.1, 10, n_features)
    y = x[:, :8] @ rng.normal(size=(8, 12)) * 0.05 + rng.normal(size=(120, 12))
    y[:, 0] = 1.0  # a flat gene: NaN Pearson, left out of the mean as before
    groups = np.arange(120) % n_groups
    splits = list(training._inner_splits(groups))
    alphas = np.asarray(sorted(RidgeRouteOptions().alphas))
    search = GridSearchCV(training._ridge_pipeline(n_components),
                          {"ridge__alpha": alphas.tolist()}, scoring=training._mean_pearson,
                          cv=splits, refit=False, error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = search.fit(x, y).cv_results_["mean_test_score"]
    scores = training._grid_scores(x, y, alphas, n_components, splits)
    assert np.array_equal(scores, expected)


def test_a_split_too_small_for_the_pca_scores_nan_there_as_in_the_grid_search():
    import warnings

    from sklearn.model_selection import GridSearchCV

    from histoexpr.tl._spot import _spot_training as training

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(70, 30)), rng.normal(size=(70, 5))
    groups = np.repeat([0, 1], [15, 55])  # training on section 0 alone: 15 spots < 20
    splits = list(training._inner_splits(groups))
    alphas = np.asarray([1.0, 10.0])
    search = GridSearchCV(training._ridge_pipeline(20), {"ridge__alpha": alphas.tolist()},
                          scoring=training._mean_pearson, cv=splits, refit=False,
                          error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = search.fit(x, y).cv_results_["mean_test_score"]
    scores = training._grid_scores(x, y, alphas, 20, splits)
    assert np.array_equal(scores, expected, equal_nan=True) and np.isnan(scores).all()
    with pytest.raises(ValueError):  # no split can fit: the error, as before
        training._grid_scores(x[:15], y[:15], alphas, 20, [(np.arange(10), np.arange(10, 15))])
