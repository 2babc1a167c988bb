"""What people look at: figures (``plots``), interactive viewers, tables as a paper prints
them, and the run's HTML pages.
"""
