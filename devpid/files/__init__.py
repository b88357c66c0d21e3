"""The serverdir's files.

Layout, safe paths, temporary files, atomic commit, sending committed files.
"""
