"""Downstream tasks of §5.2 and Appendix D: do models trained on synthetic data work on real data?

- Classification (Figure 13): predict a categorical attribute from the whole series (features flattened,
  each feature scaled by the training side's mean and std over valid steps, 0 after each end) with an
  MLP, Gaussian naive Bayes, logistic regression, a decision tree and a linear SVM.
- Forecasting (Figure 24): predict the last `horizon` records of a feature from the earlier ones (full-length
  series only) with MLPs (1x100 and 5x200 as the paper), linear regression and RBF kernel ridge; R^2
  averaged over the predicted steps.
- Rank correlation (Table 5): Spearman correlation between the models' scores in the real setting
  (train on real A, test on real A') and a synthetic setting.

`downstream_scores` returns flat keys (higher is better for all):

| key                                             | what                                                    |
|-------------------------------------------------|---------------------------------------------------------|
| `downstream/accuracy/<model>`                   | train on synthetic B, test on real held-out A' (Fig 13) |
| `downstream/accuracy_real/<model>`              | train on real A, test on A' (the reference)             |
| `downstream/accuracy_synthetic/<model>`         | train and test on a split B -> B' of the synthetic data |
| `downstream/r2/<model>`                         | forecasting R^2, B -> A' (Figure 24)                    |
| `downstream/r2_real/<model>`                    | forecasting R^2, A -> A'                                |
| `downstream/r2_synthetic/<model>`               | forecasting R^2, B -> B'                                |
| `downstream/spearman_accuracy`, `_r2`           | Spearman of B -> B' scores with A -> A' (Table 5)       |
| `downstream/spearman_accuracy_tstr`, `_r2_tstr` | Spearman of B -> A' scores with A -> A'                 |

Everything is seeded and deterministic. Fits run on one BLAS thread; on 2 CPU cores one setting of
2000 series x 550 steps takes about 5 s for the classifiers and 6 s for the regressors (MLPs dominate).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from dg_jax.data.schema import DataError, Dataset
from dg_jax.evaluation.metrics import check_same_schema, feature_scaling

CLASSIFIERS = ("mlp", "naive_bayes", "logistic_regression", "decision_tree", "linear_svm")
REGRESSORS = ("mlp_1x100", "mlp_5x200", "linear_regression", "kernel_ridge")


def make_classifier(name: str, seed: int = 0):
  """A fresh scikit-learn classifier by name (one of CLASSIFIERS), small and seeded."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.naive_bayes import GaussianNB
  from sklearn.neural_network import MLPClassifier
  from sklearn.svm import LinearSVC
  from sklearn.tree import DecisionTreeClassifier
  makers = {
      "mlp": lambda: MLPClassifier(hidden_layer_sizes=(100,), max_iter=100, random_state=seed),
      "naive_bayes": GaussianNB,
      "logistic_regression": lambda: LogisticRegression(max_iter=500),
      "decision_tree": lambda: DecisionTreeClassifier(random_state=seed),
      "linear_svm": lambda: LinearSVC(max_iter=2000, random_state=seed),
  }
  return _make(makers, name, "classifier")


def make_regressor(name: str, seed: int = 0):
  """A fresh scikit-learn regressor by name (one of REGRESSORS), seeded."""
  from sklearn.kernel_ridge import KernelRidge
  from sklearn.linear_model import LinearRegression
  from sklearn.neural_network import MLPRegressor
  makers = {
      "mlp_1x100": lambda: MLPRegressor(hidden_layer_sizes=(100,), max_iter=200, early_stopping=True,
                                        random_state=seed),
      "mlp_5x200": lambda: MLPRegressor(hidden_layer_sizes=(200,) * 5, max_iter=200, early_stopping=True,
                                        random_state=seed),
      "linear_regression": LinearRegression,
      "kernel_ridge": lambda: KernelRidge(alpha=1.0, kernel="rbf"),
  }
  return _make(makers, name, "regressor")


def _make(makers: dict[str, Callable], name: str, what: str):
  if name not in makers:
    raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(makers)}")
  return makers[name]()


def _index(variables, name: str | int, role: str, source: str) -> int:
  names = [v.name for v in variables]
  if isinstance(name, (int, np.integer)):
    if not 0 <= name < len(names):
      raise DataError(f"{source}: {role} index {name} out of range (there are {len(names)})")
    return int(name)
  if name not in names:
    raise DataError(f"{source}: unknown {role} {name!r}; {role}s are {names}")
  return names.index(name)


def _check_pair(train: Dataset, test: Dataset) -> None:
  """Same variables (names, kinds, categories) and the same T on both sides."""
  check_same_schema(train, test)
  if train.max_length != test.max_length:
    raise DataError(f"{test.source}: series have T = {test.max_length}, the training side {train.source} "
                    f"has {train.max_length}")


def series_matrix(data: Dataset, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """[n, T*K] scaled features, 0 after each series' end (so the length shows too)."""
  valid = data.valid_steps[..., None]
  x = (data.features.astype(np.float64) - mean) / std
  return np.where(valid, x, 0.0).reshape(data.num_samples, -1)


def _fit_predict(model, x_train, y_train, x_test) -> np.ndarray:
  """Fits and predicts without convergence warnings, on one BLAS thread: these small models ran up to
  10x slower with threads on a busy 2-core machine."""
  from sklearn.exceptions import ConvergenceWarning
  from threadpoolctl import threadpool_limits
  with warnings.catch_warnings(), threadpool_limits(1):
    warnings.simplefilter("ignore", ConvergenceWarning)
    return model.fit(x_train, y_train).predict(x_test)


def classification_scores(train: Dataset, test: Dataset, attribute: str | int,
                          models: Sequence[str] = CLASSIFIERS, seed: int = 0) -> dict[str, float]:
  """{model: test accuracy} predicting a categorical attribute from the series, trained on `train`.
  A training side with one class predicts that class (some classifiers refuse to fit one class)."""
  _check_pair(train, test)
  a = _index(train.attribute_vars, attribute, "attribute", train.source)
  if not train.attribute_vars[a].is_categorical:
    raise DataError(f"{train.source}: attribute {train.attribute_vars[a].name!r} is continuous; "
                    "classification needs a categorical one")
  mean, std = feature_scaling(train)
  x_train, x_test = series_matrix(train, mean, std), series_matrix(test, mean, std)
  y_train, y_test = train.attributes[:, a].astype(int), test.attributes[:, a].astype(int)
  out = {}
  for name in models:
    model = make_classifier(name, seed)
    if np.unique(y_train).size < 2:
      from sklearn.dummy import DummyClassifier
      model = DummyClassifier(strategy="most_frequent")
    out[name] = float(np.mean(_fit_predict(model, x_train, y_train, x_test) == y_test))
  return out


def forecast_arrays(data: Dataset, feature: int, horizon: int, mean: float, std: float):
  """(inputs [n, T-horizon], targets [n, horizon]) of the full-length series, scaled by mean and std."""
  full = data.lengths == data.max_length
  x = (data.features[full, :, feature].astype(np.float64) - mean) / std
  return x[:, :-horizon], x[:, -horizon:]


def forecasting_scores(train: Dataset, test: Dataset, feature: str | int, horizon: int,
                       models: Sequence[str] = REGRESSORS, seed: int = 0) -> dict[str, float]:
  """{model: test R^2} forecasting a continuous feature's last `horizon` records from the earlier ones,
  trained on `train`'s full-length series (R^2 of each step, averaged over the steps)."""
  from sklearn.metrics import r2_score
  j = _index(train.feature_vars, feature, "feature", train.source)
  if train.feature_vars[j].is_categorical:
    raise DataError(f"{train.source}: feature {train.feature_vars[j].name!r} is categorical; forecasting needs "
                    "a continuous one")
  _check_pair(train, test)
  if not 1 <= horizon < train.max_length:
    raise ValueError(f"horizon must lie in [1, T-1 = {train.max_length - 1}], got {horizon}")
  mean, std = feature_scaling(train)
  data = [forecast_arrays(d, j, horizon, mean[j], std[j]) for d in (train, test)]
  for d, (x, _) in zip((train, test), data):
    if len(x) < 2:
      raise DataError(f"{d.source}: forecasting needs at least 2 full-length series (length {d.max_length}), "
                      f"found {len(x)}")
  (x_train, y_train), (x_test, y_test) = data
  return {name: float(r2_score(y_test, _fit_predict(make_regressor(name, seed), x_train, y_train, x_test)))
          for name in models}


def rank_correlation(reference: dict[str, float], other: dict[str, float]) -> float:
  """Spearman correlation of the models' scores in two settings (same model names); NaN if either
  setting scores every model alike."""
  from scipy.stats import spearmanr
  names = sorted(reference)
  if sorted(other) != names:
    raise ValueError(f"rank_correlation: the settings score different models: {names} vs {sorted(other)}")
  a, b = [reference[n] for n in names], [other[n] for n in names]
  if len(names) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(spearmanr(a, b).statistic)


def split(data: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
  """A seeded random (train, test) split."""
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
  order = np.random.default_rng(seed).permutation(data.num_samples)
  n_test = int(round(data.num_samples * test_fraction))
  if n_test < 1 or n_test >= data.num_samples:
    raise DataError(f"{data.source}: {data.num_samples} samples are too few to split with test_fraction "
                    f"{test_fraction}")
  return data.subset(np.sort(order[n_test:])), data.subset(np.sort(order[:n_test]))


def downstream_scores(real_train: Dataset, real_test: Dataset, synthetic: Dataset,
                      attribute: str | int | None = None, feature: str | int | None = None, horizon: int = 0,
                      classifiers: Sequence[str] = CLASSIFIERS, regressors: Sequence[str] = REGRESSORS,
                      synthetic_test_fraction: float = 0.25, seed: int = 0) -> dict[str, float]:
  """Classification of `attribute` and/or forecasting of `feature`'s last `horizon` records in the three
  settings and their rank correlations (keys in the module docstring). Skips a task left as None."""
  if attribute is None and feature is None:
    raise ValueError("downstream_scores: give an attribute to classify and/or a feature to forecast")
  out = {}
  syn_train, syn_test = split(synthetic, synthetic_test_fraction, seed)
  tasks = []
  if attribute is not None:
    tasks.append(("accuracy", lambda tr, te: classification_scores(tr, te, attribute, classifiers, seed)))
  if feature is not None:
    tasks.append(("r2", lambda tr, te: forecasting_scores(tr, te, feature, horizon, regressors, seed)))
  for key, score in tasks:
    settings = {key: score(synthetic, real_test), f"{key}_real": score(real_train, real_test),
                f"{key}_synthetic": score(syn_train, syn_test)}
    for setting, scores in settings.items():
      out.update({f"downstream/{setting}/{m}": v for m, v in scores.items()})
    out[f"downstream/spearman_{key}"] = rank_correlation(settings[f"{key}_real"], settings[f"{key}_synthetic"])
    out[f"downstream/spearman_{key}_tstr"] = rank_correlation(settings[f"{key}_real"], settings[key])
  return out
