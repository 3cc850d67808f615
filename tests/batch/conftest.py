"""A small registered classifier, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from tests.batch.data import register_churn, train_churn

from berth.app import Berth


@pytest.fixture(scope="session")
def churn_model() -> Any:
    return train_churn()


@pytest.fixture
def churn(client: Berth, churn_model: Any) -> Berth:
    """A client whose registry holds ``churn`` v1 as production (SQLite)."""
    register_churn(client, churn_model)
    return client


@pytest.fixture
def any_churn(any_client: Berth, churn_model: Any) -> Berth:
    """``churn`` on SQLite and on PostgreSQL."""
    register_churn(any_client, churn_model)
    return any_client
