"""Adapters to training frameworks (optional extras): ``fxprune.integrations.lightning``."""
