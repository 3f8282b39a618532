"""Reporting: the paper's reported numbers as data, tables and figures for the book, notebook execution."""
