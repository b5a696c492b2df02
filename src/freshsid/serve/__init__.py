"""Serving: release bundles (what is served) and, built on them, the refresh loop and the HTTP service."""
