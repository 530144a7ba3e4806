"""Adapters for what lives on disk: state, journal, evidence."""
