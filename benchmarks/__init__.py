"""Latency and quality-drift measurement, and the reports (JSON, Markdown)."""
