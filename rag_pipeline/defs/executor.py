"""The executor that runs the ingestion steps, chosen by configuration (RAG_EXECUTOR and
RAG_EXECUTOR_CONFIG), never by code: the same definitions run in one process on a laptop and as
Celery tasks or Kubernetes jobs in a cluster. It is the definitions' default executor, so sensor
runs, UI materializations and backfills all use it."""

from __future__ import annotations

import importlib
import json

from dagster import ExecutorDefinition

# Short names for Dagster's own executors; any other "module:attribute" works too.
EXECUTORS = {
    # One process per run: one database pool and one Qdrant client for all its steps (the
    # embedded Qdrant folder admits one process). Scale-out is across runs, via the run launcher.
    "in_process": "dagster:in_process_executor",
    "multiprocess": "dagster:multiprocess_executor",
    "celery": "dagster_celery:celery_executor",
    "docker": "dagster_docker:docker_executor",
    "k8s": "dagster_k8s:k8s_job_executor",
    "celery_k8s": "dagster_celery_k8s:celery_k8s_job_executor",
}


class ExecutorConfigError(ValueError):
    pass


def executor_from_config(name: str, config: str | None = None) -> ExecutorDefinition:
    """`name`: a key of EXECUTORS or "module:attribute"; `config`: the executor's config as
    JSON (e.g. {"broker": {"env": "CELERY_BROKER_URL"}}: secrets stay in the environment)."""
    target = EXECUTORS.get(name, name)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ExecutorConfigError(f"RAG_EXECUTOR must be one of {sorted(EXECUTORS)} or 'module:attribute', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.split(".")[0].replace("_", "-")
        raise ExecutorConfigError(f"RAG_EXECUTOR={name} needs the {package} package in the code image ({exc})") from exc
    executor = getattr(module, attribute, None)
    if not isinstance(executor, ExecutorDefinition):
        raise ExecutorConfigError(f"RAG_EXECUTOR={name}: {target} is not a Dagster executor")
    if not config:
        return executor
    try:
        values = json.loads(config)
    except json.JSONDecodeError as exc:
        raise ExecutorConfigError(f"RAG_EXECUTOR_CONFIG is not valid JSON: {exc}") from exc
    return executor.configured(values, name=f"{executor.name}_from_rag_executor_config")
