"""Synthetic loan applications and the ``credit-risk`` models trained on them.

The data is generated, never downloaded, and is the same for a given seed on every machine.

Planted bias (documented in data/CREDIT_DATA.md): the true default risk depends only on financial
features, but the *historical* label ``default`` was recorded by a biased process: about 12 % of
female applicants who repaid were nevertheless recorded as defaults. A model trained on these labels
learns to penalise ``sex = female``; the unbiased outcome is kept in ``true_default`` (never a
feature) so fairness checks can measure the harm against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

ROWS = 24_000
SEED = 20261126
LABEL = "default"
TRUTH = "true_default"
SENSITIVE = ("sex", "age_band")
BIAS_RATE = 0.12

FEATURES = (
    "age", "age_band", "sex", "income", "employment_years", "loan_amount", "loan_term_months",
    "interest_rate", "debt_to_income", "credit_history_years", "open_accounts",
    "late_payments_2y", "home_ownership", "purpose",
)  # fmt: skip
PURPOSES = ("car", "debt_consolidation", "education", "home_improvement", "medical", "business")
_PURPOSE_RISK = {
    "car": -0.2,
    "debt_consolidation": 0.25,
    "education": 0.1,
    "home_improvement": -0.15,
    "medical": 0.3,
    "business": 0.45,
}


def generate(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    """Loan applications with the historical (biased) label and the true outcome."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 76, rows)
    sex = rng.choice(np.array(["female", "male"], dtype=object), rows)
    employment = np.minimum(np.maximum(age - 18, 0), rng.gamma(2.0, 3.5, rows)).round(1)
    income = np.round(
        rng.lognormal(10.6, 0.45, rows) * (1 + 0.012 * np.minimum(employment, 25)), -2
    )
    home = rng.choice(
        np.array(["rent", "mortgage", "own"], dtype=object), rows, p=[0.45, 0.4, 0.15]
    )
    purpose = rng.choice(
        np.array(PURPOSES, dtype=object), rows, p=[0.22, 0.3, 0.1, 0.18, 0.08, 0.12]
    )
    term = rng.choice(np.array([12, 24, 36, 48, 60]), rows, p=[0.1, 0.2, 0.35, 0.15, 0.2])
    loan = np.round(np.clip(rng.lognormal(9.3, 0.6, rows), 1_000, 60_000), -2)
    history = np.round(np.clip(age - 18 - rng.gamma(2.0, 2.0, rows), 0, None), 1)
    accounts = rng.poisson(4, rows)
    late = rng.poisson(np.where(rng.random(rows) < 0.2, 1.8, 0.25), rows)
    dti = np.round(np.clip(rng.beta(2.2, 5.0, rows) + loan / (income * 4), 0.01, 0.95), 3)

    purpose_risk = np.vectorize(_PURPOSE_RISK.__getitem__)(purpose)
    logit = (
        -1.9
        + 1.1 * z(dti)
        + 0.55 * late
        - 0.45 * z(np.log(income))
        + 0.35 * z(loan / income)
        - 0.35 * z(history)
        - 0.2 * z(employment)
        + 0.25 * (term >= 48)
        + purpose_risk
        + np.where(home == "own", -0.3, 0.0)
    )
    rate = np.round(np.clip(6.5 + 2.2 * logit + rng.normal(0, 1.2, rows), 3.0, 29.9), 2)
    truth = rng.random(rows) < 1 / (1 + np.exp(-logit))
    biased = truth | ((sex == "female") & (rng.random(rows) < BIAS_RATE))
    bands = pd.cut(
        age, [17, 25, 35, 50, 65, 120], labels=["18-25", "26-35", "36-50", "51-65", "66+"]
    ).astype(str)
    return pd.DataFrame(
        {
            "age": age.astype(np.int64),
            "age_band": np.asarray(bands, dtype=object),
            "sex": sex,
            "income": income.astype(np.float64),
            "employment_years": employment.astype(np.float64),
            "loan_amount": loan.astype(np.float64),
            "loan_term_months": term.astype(np.int64),
            "interest_rate": rate.astype(np.float64),
            "debt_to_income": dti.astype(np.float64),
            "credit_history_years": history.astype(np.float64),
            "open_accounts": accounts.astype(np.int64),
            "late_payments_2y": late.astype(np.int64),
            "home_ownership": home,
            "purpose": purpose,
            LABEL: biased.astype(np.int64),
            TRUTH: truth.astype(np.int64),
        }
    )


def z(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Standardise, so the risk weights below read as effects per standard deviation."""
    return np.asarray((x - x.mean()) / x.std(), dtype=np.float64)


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame


def split(data: pd.DataFrame, test_fraction: float = 0.2, seed: int = SEED) -> Split:
    order = np.random.default_rng(seed + 1).permutation(len(data))
    cut = int(len(data) * (1 - test_fraction))
    return Split(
        data.iloc[order[:cut]].reset_index(drop=True), data.iloc[order[cut:]].reset_index(drop=True)
    )


CATEGORICAL = ("age_band", "sex", "home_ownership", "purpose")


def build_model(params: dict[str, Any]) -> Any:
    """Ordinal codes for the categories, then histogram gradient boosting on numbers alone.

    Fitted on arrays in ``FEATURES`` order (see :func:`matrix`), not DataFrames: a model without
    feature names is handed the validated batch as one array, and scikit-learn's checks of a
    one-row DataFrame cost more than the trees (see data/CREDIT_DATA.md). The boosting has no
    ``categorical_features`` on purpose: native categories run a second ColumnTransformer and
    OrdinalEncoder inside every ``predict_proba``, and splits on the codes score the same here.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

    columns = list(FEATURES)
    encode = ColumnTransformer(
        [
            (
                "categories",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                [columns.index(c) for c in CATEGORICAL],
            ),
            (
                "numbers",
                FunctionTransformer(validate=True),  # objects -> one float64 block
                [i for i, c in enumerate(columns) if c not in CATEGORICAL],
            ),
        ]
    )
    boost = HistGradientBoostingClassifier(random_state=0, **params)
    return Pipeline([("encode", encode), ("boost", boost)])


def matrix(frame: pd.DataFrame) -> npt.NDArray[Any]:
    """The features as the demo models take them: one array, columns in ``FEATURES`` order."""
    return frame[list(FEATURES)].to_numpy()


# v1: an early, simple model on the first year of applications; v2: more data, more capacity.
# (v2 stops early on a tenth of its rows held out: 61 trees. scikit-learn predicts tree by tree,
# a few microseconds a tree even for one row, so a higher learning rate keeps the count down.)
VERSIONS: tuple[dict[str, Any], ...] = (
    {"rows": 4_000, "params": {"max_iter": 25, "max_depth": 2, "learning_rate": 0.1}},
    {
        "rows": None,
        "params": {
            "max_iter": 100,
            "max_depth": 4,
            "learning_rate": 0.15,
            "l2_regularization": 1.0,
        },
    },
)


def train(version: int, data: Split) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """Fit one demo version; returns the model, its held-out metrics and its params."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    spec = VERSIONS[version - 1]
    train_rows = data.train if spec["rows"] is None else data.train.iloc[: spec["rows"]]
    model = build_model(spec["params"])
    model.fit(matrix(train_rows), train_rows[LABEL].to_numpy())
    proba = model.predict_proba(matrix(data.test))[:, 1]
    metrics = {
        "auc": float(roc_auc_score(data.test[LABEL], proba)),
        "accuracy": float(accuracy_score(data.test[LABEL], proba >= 0.5)),
        "log_loss": float(log_loss(data.test[LABEL], proba)),
        "auc_true_outcome": float(roc_auc_score(data.test[TRUTH], proba)),
    }
    params = {**spec["params"], "train_rows": len(train_rows), "seed": SEED}
    return model, metrics, params
