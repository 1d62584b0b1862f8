"""Jobs and their status records.

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 19:30:47.519739

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('jobs',
    sa.Column('id', sa.String(length=8), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('proc', sa.Integer(), nullable=False),
    sa.Column('mem', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('key_digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=256), nullable=True),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_count', sa.Integer(), nullable=False),
    sa.CheckConstraint("state IN ('waiting', 'running', 'complete', 'cancelled', 'error')", name=op.f('ck_jobs_state')),
    sa.CheckConstraint('mem >= 1', name=op.f('ck_jobs_mem')),
    sa.CheckConstraint('proc >= 1', name=op.f('ck_jobs_proc')),
    sa.CheckConstraint('progress >= 0 AND progress <= 100', name=op.f('ck_jobs_progress')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_jobs_state_created_at', ['state', 'created_at'], unique=False)

    op.create_table('job_status',
    sa.Column('job_id', sa.String(length=8), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=256), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('waiting', 'running', 'complete', 'cancelled', 'error')", name=op.f('ck_job_status_state')),
    sa.CheckConstraint('progress >= 0 AND progress <= 100', name=op.f('ck_job_status_progress')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_status_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'seq', name=op.f('pk_job_status'))
    )


def downgrade():
    op.drop_table('job_status')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_created_at')
        batch_op.drop_index('ix_jobs_created_at_id')

    op.drop_table('jobs')
