"""BPNet Studio job system: run specs and their DAG, the job store, the artifact store, Celery
workers and the `bpnet-studio` CLI.

The dashboard talks only to `worker.client`; nothing here except `worker.stages` (called inside a
worker process) imports TensorFlow.
"""
