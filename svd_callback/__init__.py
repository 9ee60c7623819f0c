"""svd-callback."""
