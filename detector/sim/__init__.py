"""Traffic simulator: rules with seasonality, noise, spam waves and incidents (seeded)."""
