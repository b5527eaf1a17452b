"""The outbound queue: durable envelopes + message files, delivery to remote MX, bounces."""
