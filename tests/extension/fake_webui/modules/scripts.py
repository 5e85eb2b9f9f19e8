"""Stand-in for modules/scripts.py (signatures from A1111 v1.10.1; see modules/__init__.py)."""

AlwaysVisible = object()


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

    def load_module(self, module):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Script) and value is not Script:
                script = value()
                if script.show(False) is AlwaysVisible:
                    self.alwayson_scripts.append(script)

    def process(self, p):
        for script in self.alwayson_scripts:
            script.process(p)

    def after_extra_networks_activate(self, p, **kwargs):
        pass
