"""Calibration of in-context classification from the log-probabilities of the K label verbalizations.

An in-context classifier's raw argmax is biased by the prompt (majority label, recency, common tokens). Two
training-free fixes are implemented, both taking an ``(N, K)`` array of label log-probabilities (numpy or torch;
results are numpy):

- Contextual calibration, Zhao et al. 2021, "Calibrate Before Use: Improving Few-Shot Performance of Language
  Models" (code: tonyzhaozh/few-shot-learning): the label distribution the prompt gives content-free inputs
  ("N/A", "", "[MASK]") estimates the bias, which is divided out, ``q = diag(p_cf)^-1 p``.
- Prototypical calibration, Han et al. 2022, "Prototypical Calibration for Few-shot Learning of Language Models"
  (its public evaluation script: scikit-learn ``GaussianMixture``, ``n_init=100``, weights reset to equal, Munkres
  on the cluster means): a K-component full-covariance Gaussian mixture is fitted by EM to the outputs of
  unlabeled "estimate" inputs, clusters are matched one-to-one to labels by the Hungarian algorithm maximising the
  summed cluster means on their labels, and an input takes the label of the cluster with the highest density under
  equal priors (the fitted mixing weights are discarded, as in the paper, so an unbalanced estimate set does not
  carry over into the predictions).

Features for the mixture are the label log-probabilities renormalised over the K labels (a log-softmax over the
label axis), as in Han et al.'s script, which fits the mixture to ``log`` of the label probabilities normalised over
the labels. Normalising removes how much mass the model puts outside the label words, which varies from input to
input and is not evidence for any one label; log-space keeps the clusters closer to Gaussian than probabilities,
which are squeezed against 0 and 1.

Choosing among restarts (Han et al. 2022, Section 3.2 "the estimated parameters ... we repeat ... and select"): EM
is run from several random starts, and the restart kept is the one whose cluster-label matching is strongest: the
largest summed mean of each cluster on its matched label, ``max over restarts of sum_c mu_c[label(c)]`` (the
Hungarian matching of that restart). That is what the released code does, not the largest log-likelihood. We
followed ZihanWangKi/x-TC ``external/prompt_gpt/ProtoCal.py`` at 050444b1e6521604daf552f2efa149f5998b2283 (the
code the ICLR 2023 paper's listings point to; Han et al.'s own repository, zhixhan/ProCa at 54d1fc1, holds only a
README): ``for seed in range(100)``: fit, ``linear_sum_assignment(centers.max() - centers)``, keep the seed with the
strictly larger ``centers[row, col].sum()`` (so the first on ties). A second public copy of Han et al.'s script
(``prototypical_calibrate_fit``, label probabilities in, ``num_gmm_runs=10``) means the same rule (``cost = -sum``,
keep the lowest) but never updates its running minimum, so it keeps the last restart; we do not copy that slip.
``selection="likelihood"`` keeps the restart with the largest log-likelihood instead (what this module did before).
Prediction uses equal priors by default (the paper's Eq. 6, the density of each label's cluster); ``priors="fitted"``
weights the densities by the fitted mixing weights, as the reference's ``gmm.predict`` does.

The EM is our own numpy code (greedy k-means++ seeded k-means initialisation, ``reg_covar`` added to each covariance's
diagonal) so results do not depend on a scikit-learn version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import log_softmax, logsumexp

from eval.settings import CALIBRATIONS


def _as_logprobs(x: Any, name: str, n_labels: int | None = None, allow_1d: bool = False) -> np.ndarray:
    """``x`` as a float64 ``(N, K)`` array with N >= 1, K >= 2 (and K == n_labels when given), all finite."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    want = f"(N, {n_labels})" if n_labels is not None else "(N, K)"
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(
            f"{name} must be {want} log-probabilities of the label verbalizations (N >= 1 inputs, "
            f"K >= 2 labels), got shape {arr.shape}"
        )
    if n_labels is not None and arr.shape[1] != n_labels:
        raise ValueError(f"{name} must have {n_labels} labels, shape {want}, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{name} must be finite; {len(rows)} row(s) contain NaN or inf, first at row {rows[0]}")
    return arr


def contextual_calibration(logprobs: Any, content_free_logprobs: Any) -> np.ndarray:
    """Calibrated log-probabilities ``(N, K)`` (Zhao et al. 2021); their argmax is the calibrated prediction.

    Each row of ``logprobs`` and of ``content_free_logprobs`` (``(M, K)`` or ``(K,)``, one row per content-free
    input) is normalised over the K labels; ``p_cf`` is the mean of the normalised content-free rows; the result is
    ``log(p / p_cf)`` renormalised over the labels. Computed in log space, so tiny probabilities do not underflow.
    Zhao et al.'s code averages the unnormalised content-free label probabilities before normalising; averaging
    normalised rows, as here, weighs every content-free input equally.
    """
    lp = _as_logprobs(logprobs, "logprobs")
    cf = _as_logprobs(content_free_logprobs, "content_free_logprobs", n_labels=lp.shape[1], allow_1d=True)
    log_p_cf = logsumexp(log_softmax(cf, axis=1), axis=0) - np.log(cf.shape[0])
    return log_softmax(log_softmax(lp, axis=1) - log_p_cf, axis=1)


# --------------------------------------------------------------------------------------------------------------
# Gaussian mixture (EM)
# --------------------------------------------------------------------------------------------------------------


def _cholesky(cov: np.ndarray, reg_covar: float) -> np.ndarray:
    """Lower Cholesky factor of ``cov``, adding growing diagonal jitter if rounding left it not positive definite."""
    cov = (cov + cov.T) / 2
    eye = np.eye(len(cov))
    for jitter in [0.0] + [max(reg_covar, 1e-12) * 10.0**i for i in range(1, 9)]:
        try:
            return np.linalg.cholesky(cov + jitter * eye)
        except np.linalg.LinAlgError:
            continue
    raise ValueError("a mixture covariance is not positive definite even after jitter; increase reg_covar")


def _log_gaussian(x: np.ndarray, means: np.ndarray, chols: np.ndarray) -> np.ndarray:
    """``(N, C)`` log-densities of the rows of ``x`` under each Gaussian ``(means[c], chols[c] chols[c]^T)``."""
    n, d = x.shape
    out = np.empty((n, len(means)))
    for c, (mean, chol) in enumerate(zip(means, chols, strict=True)):
        inv_chol = np.linalg.inv(chol)  # (D, D); scipy's triangular solve is far slower on small multithreaded BLAS
        z = (x - mean) @ inv_chol.T
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        out[:, c] = -0.5 * (d * np.log(2 * np.pi) + log_det + (z * z).sum(axis=1))
    return out


@dataclass(frozen=True)
class GaussianMixtureFit:
    """A fitted full-covariance Gaussian mixture. ``log_likelihood`` is the mean per-sample log-likelihood of the
    data it was fitted to, under these final parameters."""

    weights: np.ndarray  # (C,)
    means: np.ndarray  # (C, D)
    covariances: np.ndarray  # (C, D, D), reg_covar included
    log_likelihood: float
    n_iter: int
    converged: bool

    def component_log_densities(self, x: np.ndarray) -> np.ndarray:
        """``(N, C)`` log N(x | mean_c, cov_c), without the mixing weights."""
        chols = np.stack([_cholesky(cov, 0.0) for cov in self.covariances])
        return _log_gaussian(np.asarray(x, dtype=np.float64), self.means, chols)


def _kmeans_init(x: np.ndarray, n_components: int, rng: np.random.Generator, n_iter: int = 100) -> np.ndarray:
    """Hard ``(N, C)`` responsibilities from k-means (Lloyd) seeded by greedy k-means++ (each new centre is the best
    of ``2 + log C`` candidates drawn proportionally to squared distance, as scikit-learn does)."""
    n, n_trials = len(x), 2 + int(np.log(n_components))
    centers = [x[rng.integers(n)]]
    closest = ((x - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, n_components):
        total = closest.sum()
        if total > 0:
            candidates = rng.choice(n, size=n_trials, p=closest / total)
        else:  # every point equals a centre already: any point will do
            candidates = rng.integers(n, size=1)
        dists = np.minimum(closest, ((x[None] - x[candidates][:, None]) ** 2).sum(axis=2))
        best = int(dists.sum(axis=1).argmin())
        centers.append(x[candidates[best]])
        closest = dists[best]
    centers = np.stack(centers)
    labels = np.full(n, -1)
    for _ in range(n_iter):
        new = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(n_components):
            if (labels == c).any():  # an emptied cluster keeps its centre
                centers[c] = x[labels == c].mean(axis=0)
    return np.eye(n_components)[labels]


def _m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # an empty component stays finite (reg_covar * I)
    means = resp.T @ x / nk[:, None]
    covs = np.empty((len(nk), x.shape[1], x.shape[1]))
    for c in range(len(nk)):
        diff = x - means[c]
        covs[c] = (resp[:, c, None] * diff).T @ diff / nk[c]
        covs[c].flat[:: x.shape[1] + 1] += reg_covar
    return nk / nk.sum(), means, covs


def fit_gaussian_mixture(
    x: np.ndarray,
    n_components: int,
    rng: np.random.Generator,
    max_iter: int = 300,
    tol: float = 1e-6,
    reg_covar: float = 1e-6,
) -> GaussianMixtureFit:
    """One EM run of a full-covariance Gaussian mixture on ``x`` ``(N, D)``, from a k-means++/k-means start drawn
    with ``rng``; stops when the mean log-likelihood changes by less than ``tol`` or after ``max_iter`` steps."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < n_components:
        raise ValueError(f"need at least n_components={n_components} points of shape (N, D), got shape {x.shape}")
    weights, means, covs = _m_step(x, _kmeans_init(x, n_components, rng), reg_covar)
    previous, converged, n_iter = -np.inf, False, 0
    while n_iter < max_iter and not converged:
        n_iter += 1
        chols = np.stack([_cholesky(cov, reg_covar) for cov in covs])
        weighted = _log_gaussian(x, means, chols) + np.log(weights)
        per_sample = logsumexp(weighted, axis=1)
        weights, means, covs = _m_step(x, np.exp(weighted - per_sample[:, None]), reg_covar)
        current = per_sample.mean()
        converged = abs(current - previous) < tol
        previous = current
    chols = np.stack([_cholesky(cov, reg_covar) for cov in covs])
    final = float(logsumexp(_log_gaussian(x, means, chols) + np.log(weights), axis=1).mean())
    return GaussianMixtureFit(weights, means, covs, final, n_iter, converged)


def assign_clusters_to_labels(cluster_means: np.ndarray) -> np.ndarray:
    """``cluster_to_label`` ``(K,)``: the one-to-one matching of clusters (rows of ``cluster_means`` ``(K, K)``) to
    labels (columns) that maximises the summed mean log-probability of each cluster on its label (Hungarian)."""
    means = np.asarray(cluster_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] != means.shape[1]:
        raise ValueError(f"cluster_means must be square (K clusters, K labels), got shape {means.shape}")
    rows, cols = linear_sum_assignment(means, maximize=True)
    cluster_to_label = np.empty(len(rows), dtype=np.int64)
    cluster_to_label[rows] = cols
    return cluster_to_label


def matching_score(cluster_means: np.ndarray) -> float:
    """The summed mean of each cluster on the label it is matched to (``assign_clusters_to_labels``): how clearly
    the clusters line up with the labels. Han et al.'s code keeps the restart where this is largest."""
    means = np.asarray(cluster_means, dtype=np.float64)
    cluster_to_label = assign_clusters_to_labels(means)
    return float(means[np.arange(len(means)), cluster_to_label].sum())


SELECTIONS = ("matching", "likelihood")
PRIORS = ("equal", "fitted")


def select_restart(fits: list[GaussianMixtureFit], selection: str = "matching") -> int:
    """Index of the restart to keep: the largest ``matching_score`` of its means (Han et al.'s released code), or
    with ``selection="likelihood"`` the largest log-likelihood; the first on ties (a strict ``>`` over restarts in
    order, as the reference loop)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}: expected one of {SELECTIONS}")
    if not fits:
        raise ValueError("no restarts to choose from")
    values = [matching_score(f.means) if selection == "matching" else f.log_likelihood for f in fits]
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


class PrototypicalCalibration:
    """Prototypical calibration (Han et al. 2022): fit on unlabeled estimate outputs, then predict labels.

    ``restarts`` EM runs are made, run ``i`` seeded with ``np.random.default_rng([seed, i])``, and the one kept is
    chosen by ``select_restart`` (``selection``: "matching", the released code's rule, or "likelihood"). The default
    of 100 restarts is the reference's ``range(100)``; on 2 CPU cores it costs about 2 s for 2,000 inputs and 2
    labels, a minute for 5,000 inputs and 14 labels. ``priors``: "equal" (the paper) or "fitted" mixing weights.
    """

    def __init__(
        self,
        n_labels: int,
        restarts: int = 100,
        max_iter: int = 300,
        tol: float = 1e-6,
        reg_covar: float = 1e-6,
        seed: int = 0,
        selection: str = "matching",
        priors: str = "equal",
    ) -> None:
        if selection not in SELECTIONS or priors not in PRIORS:
            raise ValueError(f"selection {selection!r}, priors {priors!r}: expected one of {SELECTIONS}, {PRIORS}")
        self.selection, self.priors = selection, priors
        if n_labels < 2 or restarts < 1 or max_iter < 1 or reg_covar < 0 or seed < 0:
            raise ValueError(
                f"need n_labels >= 2, restarts >= 1, max_iter >= 1, reg_covar >= 0, seed >= 0; got "
                f"{n_labels=}, {restarts=}, {max_iter=}, {reg_covar=}, {seed=}"
            )
        self.n_labels, self.restarts, self.max_iter = n_labels, restarts, max_iter
        self.tol, self.reg_covar, self.seed = tol, reg_covar, seed
        self.mixture_: GaussianMixtureFit | None = None
        self.restart_log_likelihoods_: list[float] = []
        self.restart_matching_scores_: list[float] = []
        self.restart_: int | None = None
        self.cluster_to_label_: np.ndarray | None = None

    def _features(self, logprobs: Any, name: str) -> np.ndarray:
        return log_softmax(_as_logprobs(logprobs, name, n_labels=self.n_labels), axis=1)

    def fit(self, estimate_logprobs: Any) -> PrototypicalCalibration:
        """Fit the mixture to ``estimate_logprobs`` ``(N, n_labels)`` (N >= n_labels) and match clusters to labels."""
        feats = self._features(estimate_logprobs, "estimate_logprobs")
        if len(feats) < self.n_labels:
            raise ValueError(
                f"estimate_logprobs needs at least n_labels={self.n_labels} rows to fit "
                f"{self.n_labels} clusters, got {len(feats)}"
            )
        fits = [
            fit_gaussian_mixture(
                feats, self.n_labels, np.random.default_rng([self.seed, i]), self.max_iter, self.tol, self.reg_covar
            )
            for i in range(self.restarts)
        ]
        self.restart_log_likelihoods_ = [f.log_likelihood for f in fits]
        self.restart_matching_scores_ = [matching_score(f.means) for f in fits]
        self.restart_ = select_restart(fits, self.selection)
        self.mixture_ = fits[self.restart_]
        self.cluster_to_label_ = assign_clusters_to_labels(self.mixture_.means)
        return self

    def scores(self, logprobs: Any) -> np.ndarray:
        """``(N, n_labels)`` log-density of each input under the cluster matched to each label (plus the log of its
        mixing weight with ``priors="fitted"``)."""
        if self.mixture_ is None or self.cluster_to_label_ is None:
            raise RuntimeError("PrototypicalCalibration.fit must be called before scores/predict")
        densities = self.mixture_.component_log_densities(self._features(logprobs, "logprobs"))
        if self.priors == "fitted":
            densities = densities + np.log(self.mixture_.weights)
        out = np.empty_like(densities)
        out[:, self.cluster_to_label_] = densities
        return out

    def predict(self, logprobs: Any) -> np.ndarray:
        """``(N,)`` predicted label indices."""
        return self.scores(logprobs).argmax(axis=1)


def calibrate(
    method: str,
    logprobs: Any,
    content_free: Any = None,
    estimate: Any = None,
    seed: int = 0,
) -> np.ndarray:
    """``(N,)`` label predictions for ``logprobs`` ``(N, K)`` with ``method`` "none" (argmax), "contextual" (needs
    ``content_free`` log-probabilities, ``(M, K)``) or "prototypical" (needs ``estimate`` log-probabilities,
    ``(M, K)``, of unlabeled inputs under the same prompt; may be ``logprobs`` itself)."""
    if method not in CALIBRATIONS:
        raise ValueError(f"method must be one of {CALIBRATIONS}, got {method!r}")
    lp = _as_logprobs(logprobs, "logprobs")
    if method == "none":
        return lp.argmax(axis=1)
    if method == "contextual":
        if content_free is None:
            raise ValueError(
                "method='contextual' needs content_free: the (M, K) label log-probabilities of "
                "content-free inputs such as 'N/A', '' and '[MASK]' under the same prompt"
            )
        return contextual_calibration(lp, content_free).argmax(axis=1)
    if estimate is None:
        raise ValueError(
            "method='prototypical' needs estimate: the (M, K) label log-probabilities of unlabeled "
            "inputs under the same prompt, to fit the clusters on"
        )
    return PrototypicalCalibration(lp.shape[1], seed=seed).fit(estimate).predict(lp)
