"""Celery workers: the app and thin tasks over `mmrecall.pipeline`'s functions. Nothing imports this
package; producers send tasks by name (`mmrecall.pipeline.queue`)."""
