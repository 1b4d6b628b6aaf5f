"""Realistic spiders of the shop site (``-a base=http://127.0.0.1:PORT``)."""
