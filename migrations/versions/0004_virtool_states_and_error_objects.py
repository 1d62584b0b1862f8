"""Virtool's states (preparing, terminated, timeout), error objects (a JSON column), step fields,
and the digest of a job's replaced key.

Existing string errors are kept as they are: each becomes a JSON string.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 13:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OLD_STATES = ('waiting', 'running', 'complete', 'cancelled', 'error')
NEW_STATES = (
    'waiting', 'preparing', 'running', 'complete', 'cancelled', 'error', 'terminated', 'timeout'
)


def _state_check(states):
    return "state IN (" + ", ".join(f"'{state}'" for state in states) + ")"


def _replace_state_checks(states):
    for table in ('jobs', 'job_status'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f'ck_{table}_state'), type_='check')
            batch_op.create_check_constraint(op.f(f'ck_{table}_state'), _state_check(states))


def upgrade():
    _replace_state_checks(NEW_STATES)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replaced_key_digest', sa.String(length=64), nullable=True))
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.add_column(sa.Column('step_name', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('step_description', sa.String(length=1024), nullable=True))

    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column(
            'job_status', 'error', type_=sa.JSON(), existing_type=sa.Text(),
            postgresql_using='to_json(error)',
        )
        return

    # SQLite: a batch copy would CAST the text to JSON, which SQLite reads as
    # NUMERIC (a message would become 0). Copy each error as a JSON string into
    # a new column instead, then put that column in the old one's place.
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error_json', sa.JSON(), nullable=True))
    op.execute("UPDATE job_status SET error_json = json_quote(error) WHERE error IS NOT NULL")
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.drop_column('error')
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.alter_column('error_json', new_column_name='error', existing_type=sa.JSON())


def downgrade():
    # The old five states name Virtool's as near as they can: preparing was
    # work under way, terminated and timed-out jobs failed.
    for table in ('jobs', 'job_status'):
        op.execute(f"UPDATE {table} SET state = 'running' WHERE state = 'preparing'")
        op.execute(f"UPDATE {table} SET state = 'error' WHERE state IN ('terminated', 'timeout')")
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column(
            'job_status', 'error', type_=sa.Text(), existing_type=sa.JSON(),
            postgresql_using=(
                "CASE WHEN json_typeof(error) = 'string' THEN error #>> '{}' "
                "ELSE error::text END"
            ),
        )
    else:
        with op.batch_alter_table('job_status', schema=None) as batch_op:
            batch_op.add_column(sa.Column('error_text', sa.Text(), nullable=True))
        op.execute(
            "UPDATE job_status SET error_text = CASE WHEN json_type(error) = 'text' "
            "THEN json_extract(error, '$') ELSE error END WHERE error IS NOT NULL"
        )
        with op.batch_alter_table('job_status', schema=None) as batch_op:
            batch_op.drop_column('error')
        with op.batch_alter_table('job_status', schema=None) as batch_op:
            batch_op.alter_column('error_text', new_column_name='error', existing_type=sa.Text())
    with op.batch_alter_table('job_status', schema=None) as batch_op:
        batch_op.drop_column('step_description')
        batch_op.drop_column('step_name')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('replaced_key_digest')
    _replace_state_checks(OLD_STATES)
