"""Protocols: the channel that enforces the message rules, and the rules of each conversation."""
