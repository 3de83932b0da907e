"""Configuration: the frozen model, the strict TOML loader and the reload comparison. No trio."""
