"""The operator dashboard: routes (routes.py), the state document (state.py), the
statistics reader shared with /metrics and the CLI (stats.py) and the page
itself (static/)."""
