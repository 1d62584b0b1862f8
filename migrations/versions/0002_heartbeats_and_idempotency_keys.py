"""Heartbeats (jobs.pinged_at) and idempotent pushes (job_status.idempotency_key).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:33:31.901974

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('request_digest', sa.String(length=64), nullable=True))
        batch_op.create_index('uq_job_status_idempotency_key', ['job_id', 'idempotency_key'], unique=True)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pinged_at', sa.DateTime(timezone=True), nullable=True))



def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('pinged_at')

    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.drop_index('uq_job_status_idempotency_key')
        batch_op.drop_column('request_digest')
        batch_op.drop_column('idempotency_key')

