"""Using what a run trained: its adapters loaded once (adapters.py), generation and sampling, merging into a
standalone model, an OpenAI-compatible HTTP server and a chat UI."""
