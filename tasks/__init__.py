"""Steps of a backup or restore: plain functions plus thin Prefect task wrappers."""
