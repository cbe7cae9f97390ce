"""Prefect flows of dbbackup and the `dbbackup` command line."""
