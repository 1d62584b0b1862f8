"""Job numbers (jobs.number, given in creation order, existing jobs included), user ids
(users: every distinct handle a job names, numbered by first appearance), the counter that
keeps numbers from being given twice, and what a Virtool 42.x worker's claim stores
(jobs.claim, jobs.steps; jobs.claimed_by widened to its runnerId).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

WAITING_UNCLAIMED = sa.text("state = 'waiting' AND claimed_at IS NULL")


def upgrade():
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('handle', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('handle', name=op.f('uq_users_handle')),
    sqlite_autoincrement=True,
    )
    op.create_table('counters',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters')),
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('number', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('claim', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('steps', sa.JSON(), nullable=True))
        batch_op.alter_column('claimed_by', existing_type=sa.String(length=64), type_=sa.String(length=255),
                              existing_nullable=True)

    # Existing jobs are numbered in the order they were made (ties by id), and
    # their users by the order in which a job first named each.
    op.execute(
        "UPDATE jobs SET number = numbered.n FROM "
        "(SELECT id, ROW_NUMBER() OVER (ORDER BY created_at, id) AS n FROM jobs) AS numbered "
        "WHERE numbered.id = jobs.id"
    )
    op.execute(
        "INSERT INTO users (handle) SELECT user_id FROM jobs GROUP BY user_id "
        "ORDER BY MIN(created_at), user_id"
    )
    op.execute("INSERT INTO counters (name, value) SELECT 'job_number', COALESCE(MAX(number), 0) FROM jobs")

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('number', existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint(op.f('uq_jobs_number'), ['number'])
        batch_op.create_check_constraint(op.f('ck_jobs_number'), 'number >= 1')
        # The claim of a 42.x worker looks only at waiting jobs not yet taken, by task.
        batch_op.create_index('ix_jobs_claimable', ['task', 'created_at'], unique=False,
                              postgresql_where=WAITING_UNCLAIMED, sqlite_where=WAITING_UNCLAIMED)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_claimable')
        batch_op.drop_constraint(op.f('ck_jobs_number'), type_='check')
        batch_op.drop_constraint(op.f('uq_jobs_number'), type_='unique')
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('jobs', 'claimed_by', existing_type=sa.String(length=255), type_=sa.String(length=64),
                        postgresql_using='left(claimed_by, 64)')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        if op.get_bind().dialect.name != 'postgresql':
            batch_op.alter_column('claimed_by', existing_type=sa.String(length=255), type_=sa.String(length=64),
                                  existing_nullable=True)
        batch_op.drop_column('steps')
        batch_op.drop_column('claim')
        batch_op.drop_column('number')
    op.drop_table('counters')
    op.drop_table('users')
