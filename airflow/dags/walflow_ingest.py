"""Ingests a batch of users into Postgres on a schedule, then checks the pipeline's health.

Both tasks call the walflow binary (``$WALFLOW_BIN``, default ``walflow`` on PATH) with the
worker's WALFLOW_* environment, so the DAG holds no connection details of its own. walflow
exits non-zero on failure (3 when a health check fails), which fails the task: nothing is
swallowed. The DAG file does no work at import time.
"""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

WALFLOW = "${WALFLOW_BIN:-walflow}"

with DAG(
    dag_id="walflow_ingest",
    description="randomuser-style API -> Postgres with walflow ingest, then the pipeline's health and lag",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["walflow"],
) as dag:
    # --json prints the run's summary (fetched, inserted, updated, rejected, ...) into the
    # task log. Without WALFLOW_INGEST_SOURCE, walflow's default source is used.
    ingest_users = BashOperator(
        task_id="ingest_users",
        bash_command=(
            f'{WALFLOW} ingest --count "${{WALFLOW_INGEST_COUNT:-500}}" --json '
            '${WALFLOW_INGEST_SOURCE:+--source "$WALFLOW_INGEST_SOURCE"}'
        ),
        append_env=True,
    )

    # Fails the run when Postgres, Kafka or Cassandra is unreachable or unfit (doctor), or
    # when a hop is further behind than its threshold (walflow lag exits 3 naming the hop:
    # the slot's unconfirmed WAL, cdc not attached or behind, a pipeline's results in
    # Cassandra older than the limit). Thresholds come from the environment
    # (WALFLOW_MAX_LAG_BYTES, WALFLOW_MAX_LAG_SECONDS, WALFLOW_MAX_LAG_EVENTS), as do the slot
    # (WALFLOW_SLOT), the pipelines (WALFLOW_PIPELINES_DIR) and the checkpoints
    # (WALFLOW_CHECKPOINT_DIR).
    check_pipeline_health = BashOperator(
        task_id="check_pipeline_health",
        bash_command=(
            f"{WALFLOW} doctor && "
            f"{WALFLOW} lag "
            '--max-lag-bytes "${WALFLOW_MAX_LAG_BYTES:-256MB}" '
            '--max-lag-seconds "${WALFLOW_MAX_LAG_SECONDS:-300}" '
            '${WALFLOW_MAX_LAG_EVENTS:+--max-lag-events "$WALFLOW_MAX_LAG_EVENTS"}'
        ),
        append_env=True,
    )

    ingest_users >> check_pipeline_health
