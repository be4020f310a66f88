"""The webhook sender: POSTs the final status of tasks to their callback URLs (`python -m webhooks`)."""
