"""Stand-in for modules/options.py (signatures from A1111 v1.10.1; see modules/__init__.py)."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):  # noqa: PLR0917  (A1111's signature)
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.comment_after = comment_after
        self.restrict_api = restrict_api
        self.restart = False

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_restart(self):
        self.restart = True
        return self


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        v.section = section_identifier[0:2]
        if len(section_identifier) == 3:
            v.category_id = section_identifier[2]
    return options_dict


class Options:
    def __init__(self, data_labels, restricted_opts):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {k: v.default for k, v in data_labels.items()})
        object.__setattr__(self, "restricted_opts", restricted_opts)

    def __setattr__(self, key, value):
        self.data[key] = value

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        # options.py:144-171; a key no extension registered raises KeyError, as in A1111
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels[key]
        if is_api and getattr(option, "restrict_api", False):
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default
