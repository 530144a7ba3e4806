"""The rule files a firm edits: their models and their loader."""
