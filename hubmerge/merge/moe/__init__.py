"""Mixture-of-experts from dense models (mergekit-moe): output families, config, router math, the plan."""
