"""NATS JetStream subjects, streams and consumers, and the transactional outbox."""
