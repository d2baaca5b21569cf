"""Repository root: marks the rootdir, so that `fixtures` (the zoo) imports in every run."""
