"""Celery workers: the app, thin tasks, and the plain pipeline functions they call."""
