"""The peers Errand is compared with: a naive API, raw Dramatiq and Celery no-ops."""
