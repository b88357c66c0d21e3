"""The serverdir's files: layout, safe paths, temporary files, atomic commit, sending committed files."""
