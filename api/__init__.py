"""The HTTP API (FastAPI): thin routes over storage, index and the task queue."""
