"""The private API: owns the database, the zips on disk and publishing task uids to RabbitMQ."""
