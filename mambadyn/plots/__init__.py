"""Figures (matplotlib, Agg): one function per figure kind."""
