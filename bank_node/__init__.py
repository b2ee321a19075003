"""The bank side: data loading, features, local and federated training."""
