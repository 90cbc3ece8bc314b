"""A module next to app.py, imported by it as a sibling."""
WORD = "sibling"
