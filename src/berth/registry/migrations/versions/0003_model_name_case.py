"""Model names are unique without regard to case.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from berth.errors import ConflictError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT name FROM models WHERE lower(name) IN "
            "(SELECT lower(name) FROM models GROUP BY lower(name) HAVING count(*) > 1) "
            "ORDER BY lower(name), id"
        )
    ).scalars()
    clashes = list(rows)
    if clashes:
        # No silent rename: references and prediction records name these models.
        raise ConflictError(
            "cannot make model names case-insensitive: models "
            f"{', '.join(map(repr, clashes))} differ only in case; rename all but one of each "
            "(UPDATE models SET name = ... in the metadata database) and run the command again"
        )
    op.create_index("uq_models_name_lower", "models", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_models_name_lower", table_name="models")
