"""The softphone: account, contacts, history, server connection and calls."""
