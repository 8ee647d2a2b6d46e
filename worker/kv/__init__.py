"""Prompt caching: conversation KV, the system-prefix cache, and their files."""
