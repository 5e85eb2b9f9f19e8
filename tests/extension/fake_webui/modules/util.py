"""Stand-in for modules/util.py's MassFileLister (A1111 v1.10.1, :71-155; see modules/__init__.py):
each folder is listed once and remembered until reset() or update_file_entry(path), so a file
written after a folder was listed is not seen until then, as in A1111."""

import os


class MassFileLister:
    def __init__(self):
        self.cached_dirs = {}

    def find(self, path):
        dirname, filename = os.path.split(path)
        if dirname not in self.cached_dirs:
            try:
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in os.scandir(dirname)]
            except OSError:  # A1111's scandir raises here; no test needs that
                entries = []
            self.cached_dirs[dirname] = {n: (n, s.st_mtime, s.st_ctime) for n, s in entries}
        listed = self.cached_dirs[dirname]
        if filename in listed:
            return listed[filename]
        if filename.lower() not in {n.lower() for n in listed}:
            return None
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return filename, st.st_mtime, st.st_ctime

    def exists(self, path):
        return self.find(path) is not None

    def mctime(self, path):
        stats = self.find(path)
        return (0, 0) if stats is None else stats[1:3]

    def reset(self):
        self.cached_dirs.clear()

    def update_file_entry(self, path):
        dirname, filename = os.path.split(path)
        listed = self.cached_dirs.get(dirname)
        if listed is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            listed[filename] = (filename, st.st_mtime, st.st_ctime)
