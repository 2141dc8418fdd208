"""The toy world: known objects, their exact renders and their image banks.

sdf -> objects -> truth -> banks (each imports only those before it).
"""
