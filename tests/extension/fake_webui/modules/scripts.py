"""Stand-in for modules/scripts.py (signatures from A1111 v1.10.1; see modules/__init__.py)."""

AlwaysVisible = object()
errors_reported = []  # stand-in for modules.errors.report: what A1111 would print


class Script:
    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass


class ScriptRunner:
    """Holds the always-on scripts A1111 found in the loaded script modules."""

    def __init__(self):
        self.alwayson_scripts = []
        self.infotext_fields = []  # (component, infotext key) of the loaded scripts' UIs

    def load_module(self, module):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Script) and value is not Script:
                script = value()
                if script.show(False) is AlwaysVisible:
                    self.alwayson_scripts.append(script)

    def process(self, p):
        for script in self.alwayson_scripts:
            try:  # scripts.py:828-834: an error is reported and the next script still runs
                script.process(p)
            except Exception as e:
                errors_reported.append(e)

    def after_extra_networks_activate(self, p, **kwargs):
        pass


scripts_txt2img = None  # a ScriptRunner once A1111 made its script runners (scripts.py:1028)
