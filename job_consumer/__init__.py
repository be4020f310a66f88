"""The job consumer: takes task uids from RabbitMQ and runs each task as a sandboxed sibling container."""
