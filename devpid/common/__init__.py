"""Helpers below every area: process identity, counters, coalescing, time formatting."""
