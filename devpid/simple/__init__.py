"""The simple API (PEP 503/691).

The page model, parsing upstream pages, content negotiation and rendering.
"""
