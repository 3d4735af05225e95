"""Prefect flows for the DVC stages and the pipeline, with MLflow tracking.

Importing this package first turns telemetry off and sets Prefect defaults; it must happen
before `prefect` itself is imported, because Prefect reads its settings at import time.
"""
import os

from nanochat_core.common import offline_env

offline_env()
# An ephemeral Prefect server (no PREFECT_API_URL) takes ~10 s to start on a busy 2-core
# machine; Prefect's 20 s default timeout is too tight there.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
