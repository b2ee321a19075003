"""The consortium aggregator: sums ciphertexts without ever holding the secret key."""
