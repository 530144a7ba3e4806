"""relance: chases unpaid invoices from the firm's own mailbox."""

__version__ = "0.1.0"
