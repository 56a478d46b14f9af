"""Durable SQLite record of sessions, messages, feedback, task buffers and adapter versions."""
