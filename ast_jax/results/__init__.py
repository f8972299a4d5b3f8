"""Results: statistics of released outputs and over seeds, tables and figures (I/O at the edge)."""
