"""The pure core: deciding, with no I/O and no clock."""
