"""Fault injection: each case injects one real fault and checks the end state of the store."""
