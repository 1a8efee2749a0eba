"""Calibration on constructed log-probabilities where the right answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import log_softmax

from eval.calibration import (
    GaussianMixtureFit,
    PrototypicalCalibration,
    assign_clusters_to_labels,
    calibrate,
    contextual_calibration,
    fit_gaussian_mixture,
    matching_score,
    select_restart,
)


def _binary_logprobs(margin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(N, 2)`` unnormalised label log-probabilities whose label-0 minus label-1 log-odds is ``margin``; each row
    also gets a random offset (the mass outside the label words), which calibration must ignore."""
    normalised = np.stack([-np.logaddexp(0, -margin), -np.logaddexp(0, margin)], axis=1)
    return normalised - rng.uniform(0.5, 3.0, size=(len(margin), 1))


def _blobs_logprobs(centres: np.ndarray, per_blob: int, scale: float, rng: np.random.Generator):
    """Label log-probabilities from Gaussian blobs of logits around ``centres`` ``(B, K)``, and the blob of each row."""
    logits = np.concatenate([c + scale * rng.standard_normal((per_blob, len(c))) for c in centres])
    blob = np.repeat(np.arange(len(centres)), per_blob)
    return log_softmax(logits, axis=1) - rng.uniform(0.5, 3.0, size=(len(logits), 1)), blob


# --------------------------------------------------------------------------------------------------------------
# Contextual calibration
# --------------------------------------------------------------------------------------------------------------


def test_contextual_calibration_exactly_undoes_a_multiplicative_label_bias():
    rng = np.random.default_rng(0)
    n, k = 500, 4
    true_probs = rng.dirichlet(np.full(k, 0.7), size=n)
    bias = np.array([6.0, 1.0, 0.3, 2.0])
    # The prompt multiplies each label's probability by its bias; rows also lose random mass to other tokens.
    logprobs = np.log(true_probs * bias) - rng.uniform(0, 2, size=(n, 1))
    # Content-free inputs carry the same bias on an otherwise uniform label distribution.
    content_free = np.log(np.full((3, k), 1 / k) * bias) - rng.uniform(0, 2, size=(3, 1))

    calibrated = contextual_calibration(logprobs, content_free)
    np.testing.assert_allclose(calibrated, np.log(true_probs), atol=1e-10)
    truth = true_probs.argmax(axis=1)
    assert (logprobs.argmax(axis=1) != truth).mean() > 0.2  # the bias did change many predictions
    assert (calibrate("contextual", logprobs, content_free=content_free) == truth).all()


def test_contextual_calibration_accepts_torch_and_a_single_content_free_row():
    rng = np.random.default_rng(1)
    logprobs = np.log(rng.dirichlet(np.ones(3), size=20))
    content_free = np.log(np.array([0.6, 0.3, 0.1]))
    expected = log_softmax(logprobs - content_free, axis=1)
    out = contextual_calibration(torch.tensor(logprobs, dtype=torch.float64), torch.tensor(content_free))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)


def test_contextual_calibration_averages_normalised_content_free_rows():
    # Two content-free rows with very different total mass: each counts equally once normalised.
    content_free = np.log(np.array([[0.09, 0.01], [0.2, 0.6]]))  # normalised: [0.9, 0.1] and [0.25, 0.75]
    p_cf = np.array([0.575, 0.425])
    out = contextual_calibration(np.log([[0.5, 0.5]]), content_free)
    np.testing.assert_allclose(np.exp(out[0]), (0.5 / p_cf) / (0.5 / p_cf).sum())


# --------------------------------------------------------------------------------------------------------------
# Prototypical calibration
# --------------------------------------------------------------------------------------------------------------


def test_prototypical_fixes_a_shift_contextual_calibration_cannot():
    rng = np.random.default_rng(0)
    # Both classes sit on the label-0 side of the argmax boundary (log-odds > 0), as two well-separated clusters.
    margin = np.concatenate([rng.normal(2.5, 0.3, 300), rng.normal(0.8, 0.3, 300)])
    labels = np.repeat([0, 1], 300)
    logprobs = _binary_logprobs(margin, rng)
    estimate = _binary_logprobs(np.concatenate([rng.normal(2.5, 0.3, 200), rng.normal(0.8, 0.3, 200)]), rng)
    content_free = _binary_logprobs(rng.normal(0.0, 0.05, 3), rng)  # the model is unbiased on empty inputs

    raw = (calibrate("none", logprobs) == labels).mean()
    contextual = (calibrate("contextual", logprobs, content_free=content_free) == labels).mean()
    prototypical = (calibrate("prototypical", logprobs, estimate=estimate) == labels).mean()
    assert raw < 0.6 and contextual < 0.6
    assert prototypical > 0.95


def test_hungarian_assignment_maximises_the_total_and_follows_cluster_order():
    # Per-cluster argmax gives labels (0, 0, 2), not a matching; the best matching is 0 -> 1, 1 -> 0, 2 -> 2
    # (total -0.3 - 0.2 - 0.1 = -0.6; the identity gives -2.7).
    means = np.array([[-0.1, -0.3, -3.0], [-0.2, -2.5, -1.9], [-2.0, -2.2, -0.1]])
    best = max(itertools.permutations(range(3)), key=lambda p: sum(means[c, p[c]] for c in range(3)))
    assignment = assign_clusters_to_labels(means)
    assert tuple(assignment) == best == (1, 0, 2)
    for perm in itertools.permutations(range(3)):
        perm = np.array(perm)
        np.testing.assert_array_equal(assign_clusters_to_labels(means[perm]), assignment[perm])
    with pytest.raises(ValueError, match="square"):
        assign_clusters_to_labels(np.zeros((3, 2)))


def _three_class_data(seed: int):
    rng = np.random.default_rng(seed)
    # Logit centres: every class is pulled toward label 0, so the raw argmax is poor for classes 1 and 2.
    centres = np.array([[4.0, 0.0, 0.0], [3.0, 2.3, 0.0], [3.0, 0.0, 2.3]])
    return _blobs_logprobs(centres, 150, 0.35, rng)


def test_prototypical_recovers_three_classes_whatever_the_component_order():
    logprobs, labels = _three_class_data(0)
    estimate, _ = _three_class_data(1)
    assert (logprobs.argmax(axis=1) == labels).mean() < 0.5

    model = PrototypicalCalibration(3, restarts=3, seed=0).fit(estimate)
    predictions = model.predict(logprobs)
    assert (predictions == labels).mean() > 0.95

    # Reorder the fitted components: the label matching must follow the clusters, not their indices.
    for perm in itertools.permutations(range(3)):
        perm = list(perm)
        fit = model.mixture_
        permuted = GaussianMixtureFit(
            fit.weights[perm], fit.means[perm], fit.covariances[perm], fit.log_likelihood, fit.n_iter, fit.converged
        )
        other = PrototypicalCalibration(3)
        other.mixture_, other.cluster_to_label_ = permuted, assign_clusters_to_labels(permuted.means)
        np.testing.assert_array_equal(other.predict(logprobs), predictions)


def test_prototypical_uses_equal_priors_not_fitted_weights():
    logprobs, labels = _three_class_data(2)
    # A 10:1:1 unbalanced estimate set: the fitted weights are unbalanced, the predictions must not be.
    keep = np.concatenate([np.arange(150), np.arange(150, 165), np.arange(300, 315)])
    model = PrototypicalCalibration(3, restarts=3, seed=0).fit(logprobs[keep])
    assert model.mixture_.weights.max() > 0.7
    scores = model.scores(logprobs)
    densities = model.mixture_.component_log_densities(log_softmax(logprobs, axis=1))
    np.testing.assert_allclose(scores[:, model.cluster_to_label_], densities)
    assert (model.predict(logprobs) == labels).mean() > 0.9

    # A hand-built mixture: equal isotropic covariances, weights 0.9 / 0.1. The point at log-odds 1.5 is nearer
    # the small cluster (label 1): -6.03 vs -7.85 in scaled squared distance, but with the weights the big one
    # would win (-7.96 vs -8.34).
    feature = lambda z: np.array([-np.logaddexp(0, -z), -np.logaddexp(0, z)])
    means = np.stack([feature(2.5), feature(0.5)])
    hand = PrototypicalCalibration(2)
    hand.mixture_ = GaussianMixtureFit(np.array([0.9, 0.1]), means, np.stack([0.05 * np.eye(2)] * 2), 0.0, 1, True)
    hand.cluster_to_label_ = assign_clusters_to_labels(means)
    np.testing.assert_array_equal(hand.cluster_to_label_, [0, 1])
    assert hand.predict(feature(1.5)[None] - 1.0).tolist() == [1]


def test_prototypical_is_deterministic_for_a_seed():
    estimate, _ = _three_class_data(3)
    a = PrototypicalCalibration(3, restarts=4, seed=7).fit(estimate)
    b = PrototypicalCalibration(3, restarts=4, seed=7).fit(torch.tensor(estimate))
    np.testing.assert_array_equal(a.mixture_.means, b.mixture_.means)
    np.testing.assert_array_equal(a.mixture_.covariances, b.mixture_.covariances)
    assert a.restart_log_likelihoods_ == b.restart_log_likelihoods_
    np.testing.assert_array_equal(a.predict(estimate), b.predict(estimate))


def _reference_choice(all_means: list[np.ndarray]) -> int:
    """The restart Han et al.'s released code keeps (x-TC ``ProtoCal.py`` ``train``), written out as it is: the
    Hungarian matching on ``centers.max() - centers``, its summed matched means, kept when strictly larger."""
    best_score, best = -np.inf, 0
    for i, centers in enumerate(all_means):
        rows, cols = linear_sum_assignment(centers.max() - centers)
        score = centers[rows, cols].sum()
        if score > best_score:
            best_score, best = score, i
    return best


def _fit(means, log_likelihood: float) -> GaussianMixtureFit:
    means = np.asarray(means, dtype=float)
    k = len(means)
    return GaussianMixtureFit(np.full(k, 1 / k), means, np.stack([np.eye(k)] * k), log_likelihood, 1, True)


def test_select_restart_constructed_case():
    """Three restarts: the second has the best log-likelihood, the third the strongest cluster-label matching
    (its clusters sit on the labels in swapped order, which the matching undoes); the reference keeps the third."""
    fits = [
        _fit([[-0.4, -1.2], [-1.0, -0.5]], -2.0),  # matched sum -0.9
        _fit([[-0.6, -0.8], [-0.7, -0.7]], -1.0),  # -1.3: the best likelihood, the weakest matching
        _fit([[-2.0, -0.1], [-0.2, -1.9]], -3.0),  # swapped: cluster 0 -> label 1, -0.3
        _fit([[-0.1, -2.0], [-1.9, -0.2]], -3.0),  # -0.3 again: a tie, the first is kept
    ]
    assert _reference_choice([f.means for f in fits]) == 2
    assert select_restart(fits) == 2
    assert select_restart(fits, "likelihood") == 1
    assert matching_score(fits[2].means) == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="selection"):
        select_restart(fits, "best")


def test_restarts_are_chosen_as_the_reference_chooses():
    """On data where EM lands in different optima, the kept restart is the one the reference loop keeps over the
    same fits, here not the one with the largest log-likelihood; ``selection='likelihood'`` keeps that."""
    rng = np.random.default_rng(7)
    # Six blobs for three components: EM has several local optima, so restarts matter.
    centres = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [2, 2, 0], [2, 0, 2], [0, 2, 2]], dtype=float) * 1.5
    estimate, _ = _blobs_logprobs(centres, 40, 0.3, rng)
    features = log_softmax(estimate, axis=1)
    seed, restarts = 0, 8
    fits = [fit_gaussian_mixture(features, 3, np.random.default_rng([seed, i])) for i in range(restarts)]
    single = [f.log_likelihood for f in fits]
    assert max(single) - min(single) > 1e-3  # the restarts do land in different optima

    model = PrototypicalCalibration(3, restarts=restarts, seed=seed).fit(estimate)
    assert model.restart_log_likelihoods_ == pytest.approx(single, abs=0)
    want = _reference_choice([f.means for f in fits])
    assert model.restart_ == want != int(np.argmax(single))  # the two rules part here
    np.testing.assert_array_equal(model.mixture_.means, fits[want].means)
    assert model.restart_matching_scores_[want] == max(model.restart_matching_scores_)
    by_likelihood = PrototypicalCalibration(3, restarts=restarts, seed=seed, selection="likelihood").fit(estimate)
    assert by_likelihood.mixture_.log_likelihood == max(single)
    one = PrototypicalCalibration(3, restarts=1, seed=seed).fit(estimate)
    assert one.restart_ == 0 and one.mixture_.log_likelihood == single[0]


def test_fitted_priors_weigh_the_densities():
    rng = np.random.default_rng(1)
    estimate, _ = _blobs_logprobs(np.eye(2) * 3, 30, 0.5, rng)
    equal = PrototypicalCalibration(2, restarts=2).fit(estimate)
    fitted = PrototypicalCalibration(2, restarts=2, priors="fitted").fit(estimate)
    np.testing.assert_allclose(
        fitted.scores(estimate)[:, equal.cluster_to_label_],
        equal.scores(estimate)[:, equal.cluster_to_label_] + np.log(equal.mixture_.weights),
    )
    with pytest.raises(ValueError, match="priors"):
        PrototypicalCalibration(2, priors="uniform")


def test_gaussian_mixture_log_likelihood_is_consistent():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(6, 0.5, (100, 2))])
    fit = fit_gaussian_mixture(x, 2, rng)
    assert fit.converged
    mixture_density = np.log(fit.weights) + fit.component_log_densities(x)
    np.testing.assert_allclose(np.logaddexp.reduce(mixture_density, axis=1).mean(), fit.log_likelihood)
    np.testing.assert_allclose(fit.weights.sum(), 1.0)


def test_gaussian_mixture_matches_sklearn():
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(6)
    covs = [
        np.array([[1.0, 0.6], [0.6, 0.5]]),
        np.array([[0.3, -0.1], [-0.1, 0.8]]),
        np.array([[0.5, 0.0], [0.0, 0.2]]),
    ]
    centres = [np.array([0.0, 0.0]), np.array([8.0, 1.0]), np.array([2.0, 9.0])]
    x = np.concatenate(
        [rng.multivariate_normal(m, c, size=n) for m, c, n in zip(centres, covs, [200, 120, 80], strict=True)]
    )

    ours = fit_gaussian_mixture(x, 3, np.random.default_rng(0), max_iter=1000, tol=1e-10)
    ref = mixture.GaussianMixture(
        3, covariance_type="full", reg_covar=1e-6, tol=1e-10, max_iter=1000, random_state=0
    ).fit(x)
    mine, theirs = np.lexsort(ours.means.T[::-1]), np.lexsort(ref.means_.T[::-1])
    np.testing.assert_allclose(ours.means[mine], ref.means_[theirs], atol=1e-6)
    np.testing.assert_allclose(ours.covariances[mine], ref.covariances_[theirs], atol=1e-6)
    np.testing.assert_allclose(ours.weights[mine], ref.weights_[theirs], atol=1e-6)
    assert ours.log_likelihood == pytest.approx(ref.score(x), abs=1e-8)


def test_degenerate_estimates_do_not_crash():
    same = np.tile(np.log([[0.7, 0.2, 0.1]]), (10, 1))
    predictions = PrototypicalCalibration(3, restarts=2).fit(same).predict(same)
    assert predictions.shape == (10,) and set(predictions) <= {0, 1, 2}
    # Exactly as many points as clusters, two of them duplicates.
    few = np.log([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    model = PrototypicalCalibration(3, restarts=2).fit(few)
    assert np.isfinite(model.scores(few)).all()


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    good = np.log(np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"logprobs must be \(N, K\).*got shape \(3,\)"):
        contextual_calibration(np.zeros(3), good)
    with pytest.raises(ValueError, match="K >= 2 labels"):
        calibrate("none", np.zeros((4, 1)))
    nan = good.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite.*first at row 2"):
        calibrate("none", nan)
    with pytest.raises(ValueError, match=r"content_free_logprobs must have 3 labels, shape \(N, 3\), got shape"):
        contextual_calibration(good, np.zeros((2, 2)))
    model = PrototypicalCalibration(3, restarts=1)
    with pytest.raises(ValueError, match=r"estimate_logprobs must have 3 labels.*got shape \(4, 2\)"):
        model.fit(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least n_labels=3 rows"):
        model.fit(good[:2])
    with pytest.raises(RuntimeError, match="fit must be called"):
        model.predict(good)
    with pytest.raises(ValueError, match=r"logprobs must have 3 labels"):
        model.fit(good).predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_labels >= 2"):
        PrototypicalCalibration(1)


def test_calibrate_names_the_missing_input():
    good = np.log(np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="needs content_free"):
        calibrate("contextual", good)
    with pytest.raises(ValueError, match="needs estimate"):
        calibrate("prototypical", good)
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate("platt", good)
