"""Analyses of stored runs (interactions between protocols, ...)."""
