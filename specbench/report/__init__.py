"""Reading results files back: summaries, uncertainty, tables, plots, HTML and the acceptance
profile."""
