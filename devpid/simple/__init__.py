"""The simple API (PEP 503/691): the page model, parsing upstream pages, content negotiation and rendering."""
