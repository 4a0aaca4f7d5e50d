"""Tenants: API keys with the models they may use and their quotas, and the limiter that enforces them."""
