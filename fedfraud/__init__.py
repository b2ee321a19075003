"""fedfraud: federated fraud detection for bank consortia under homomorphic encryption."""

__version__ = "0.1.0"
