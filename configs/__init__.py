"""Package data: YAML recipes."""
