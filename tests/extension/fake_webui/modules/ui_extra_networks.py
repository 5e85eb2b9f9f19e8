"""Stand-in for modules/ui_extra_networks.py (signatures from A1111 v1.10.1; see modules/__init__.py)."""

import json
import os
import urllib.parse
from pathlib import Path

from modules import extra_networks, shared, util

extra_pages = []
allowed_dirs = set()
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")


def allowed_preview_extensions():
    return set(PREVIEW_EXTENSIONS) | {shared.opts.data.get("samples_format", "png")}


def register_page(page):
    extra_pages.append(page)
    allowed_dirs.clear()
    allowed_dirs.update(set(sum([x.allowed_directories_for_previews() for x in extra_pages], [])))  # noqa: RUF017 (A1111's line)


def fetch_file(filename: str = ""):
    # A1111 v1.10.1's body, verbatim (A1111 imports HTTPException at the top; here fastapi stays
    # lazy): the route loraprompt's thumb_guard.py stands in front of
    from fastapi.exceptions import HTTPException
    from starlette.responses import FileResponse

    if not os.path.isfile(filename):
        raise HTTPException(status_code=404, detail="File not found")

    if not any(Path(x).absolute() in Path(filename).absolute().parents for x in allowed_dirs):
        raise ValueError(f"File cannot be fetched: {filename}. Must be in one of directories registered by extra pages.")

    ext = os.path.splitext(filename)[1].lower()[1:]
    if ext not in allowed_preview_extensions():
        raise ValueError(f"File cannot be fetched: {filename}. Extensions allowed: {allowed_preview_extensions()}.")

    # would profit from returning 304
    return FileResponse(filename, headers={"Accept-Ranges": "bytes"})


def quote_js(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ExtraNetworksPage:
    def __init__(self, title):
        self.title = title
        self.name = title.lower()
        self.extra_networks_tabname = self.name.replace(" ", "_")
        self.allow_prompt = True
        self.allow_negative_prompt = False
        self.metadata = {}
        self.items = {}
        self.lister = util.MassFileLister()

    def refresh(self):
        pass

    def read_user_metadata(self, item, use_cache=True):
        filename = item.get("filename")
        metadata = extra_networks.get_user_metadata(filename, lister=self.lister if use_cache else None)
        if metadata.get("description") is not None:
            item["description"] = metadata["description"]
        item["user_metadata"] = metadata

    def link_preview(self, filename):
        mtime, _ = self.lister.mctime(filename)
        return f"./sd_extra_networks/thumb?filename={urllib.parse.quote(filename.replace(os.sep, '/'))}&mtime={mtime}"

    def search_terms_from_path(self, filename, possible_directories=None):
        abspath = os.path.abspath(filename)
        for parent in possible_directories if possible_directories is not None else self.allowed_directories_for_previews():
            parent = os.path.dirname(os.path.abspath(parent))
            if abspath.startswith(parent):
                return os.path.relpath(abspath, parent)
        return ""

    def create_item(self, name, index=None):
        raise NotImplementedError()

    def list_items(self):
        raise NotImplementedError()

    def allowed_directories_for_previews(self):
        return []

    def get_sort_keys(self, path):
        mtime, ctime = self.lister.mctime(path)
        return {"date_created": int(mtime), "date_modified": int(ctime), "name": Path(path).name.lower(), "path": str(path).lower()}

    def find_preview(self, path):
        for ext in allowed_preview_extensions():
            for file in (f"{path}.{ext}", f"{path}.preview.{ext}"):
                if self.lister.exists(file):
                    return self.link_preview(file)
        return None

    def find_embedded_preview(self, path, name, metadata):
        # A1111's condition, json.loads included: it raises for a value that is not JSON
        file = f"{path}.safetensors"
        if self.lister.exists(file) and "ssmd_cover_images" in metadata and len(list(filter(None, json.loads(metadata["ssmd_cover_images"])))) > 0:
            return f"./sd_extra_networks/cover-images?page={self.extra_networks_tabname}&item={name}"
        return None

    def create_user_metadata_editor(self, ui, tabname):
        # A1111 imports it at the top; here gradio stays lazy
        from modules import ui_extra_networks_user_metadata

        return ui_extra_networks_user_metadata.UserMetadataEditor(ui, tabname, self)

    def find_description(self, path):
        for file in (f"{path}.txt", f"{path}.description.txt"):
            if self.lister.exists(file):
                with open(file, encoding="utf-8", errors="replace") as f:
                    return f.read()
        return None


def path_is_parent(parent_path, child_path):
    return os.path.abspath(child_path).startswith(os.path.abspath(parent_path))


__all__ = ["ExtraNetworksPage", "allowed_dirs", "allowed_preview_extensions", "extra_networks", "extra_pages", "fetch_file", "path_is_parent", "quote_js", "register_page"]
