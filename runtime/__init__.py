"""Plumbing the server and the client share: layered settings and the course's log format."""
