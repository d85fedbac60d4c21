"""What the workers run, as plain functions: encode items, rebuild the index, run training jobs, the
reconcile sweep; and the producer side of the queue (task names, sending, ingest, starting processes).
The Celery tasks in `mmrecall.workers` only wrap these; the CLI, benchmarks and harness call them directly."""
