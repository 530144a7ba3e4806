"""Adapters that talk to the mail servers: IMAP and SMTP."""
