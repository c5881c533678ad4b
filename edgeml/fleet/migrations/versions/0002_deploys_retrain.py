"""Deploys and the retraining loop: bundles, deployments, deployment_devices, deploy_events,
retrain_runs (edgeml.fleet.schema).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('bundles',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=True),
    sa.Column('arch', sa.String(length=32), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('manifest', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_bundles'))
    )
    op.create_table('deploy_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('deployment_id', sa.String(length=128), nullable=True),
    sa.Column('fleet', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=True),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deploy_events')),
    sa.UniqueConstraint('fleet', 'device', 'deployment_id', 'seq', name='uq_deploy_events_key')
    )
    op.create_index('ix_deploy_events_deployment', 'deploy_events', ['deployment_id', 'received_at'], unique=False)
    op.create_table('deployment_devices',
    sa.Column('deployment_id', sa.String(length=64), nullable=False),
    sa.Column('fleet', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('have', sa.Integer(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('from_version', sa.Integer(), nullable=True),
    sa.Column('serving_version', sa.Integer(), nullable=True),
    sa.Column('sends', sa.Integer(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('committed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('deployment_id', 'device', name=op.f('pk_deployment_devices'))
    )
    op.create_index('ix_deployment_devices_device', 'deployment_devices', ['fleet', 'device'], unique=False)
    op.create_table('deployments',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('fleet', sa.String(length=64), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stages', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('stage_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('soak_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('soak_s', sa.Float(), nullable=False),
    sa.Column('chunk_size', sa.Integer(), nullable=False),
    sa.Column('allow_downgrade', sa.Boolean(), nullable=False),
    sa.Column('gates', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments'))
    )
    op.create_index('ix_deployments_state', 'deployments', ['state', 'fleet'], unique=False)
    op.create_table('retrain_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('recipe', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('alert_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('host', sa.String(length=128), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('deployment_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('outcome', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retrain_runs'))
    )
    op.create_index('ix_retrain_runs_model', 'retrain_runs', ['model_name', 'started_at'], unique=False)
    op.create_index('uq_retrain_runs_one_running', 'retrain_runs', ['model_name'], unique=True, postgresql_where=sa.text("state = 'running'"), sqlite_where=sa.text("state = 'running'"))


def downgrade() -> None:
    op.drop_index('uq_retrain_runs_one_running', table_name='retrain_runs', postgresql_where=sa.text("state = 'running'"), sqlite_where=sa.text("state = 'running'"))
    op.drop_index('ix_retrain_runs_model', table_name='retrain_runs')
    op.drop_table('retrain_runs')
    op.drop_index('ix_deployments_state', table_name='deployments')
    op.drop_table('deployments')
    op.drop_index('ix_deployment_devices_device', table_name='deployment_devices')
    op.drop_table('deployment_devices')
    op.drop_index('ix_deploy_events_deployment', table_name='deploy_events')
    op.drop_table('deploy_events')
    op.drop_table('bundles')
