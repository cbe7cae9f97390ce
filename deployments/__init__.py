"""Deployment files shipped with dbbackup: prefect.yaml, the automations, the serve entry point."""
