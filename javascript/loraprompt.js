// loraprompt for Automatic1111: adds the gallery's script and stylesheet (served by the extension's
// routes under loraprompt/gallery/static/) once the UI is loaded. DOM only: no tag or weight logic.
(function () {
    "use strict";
    var BASE = "loraprompt/gallery/static/";
    // the order of loraprompt.ui.routes.SCRIPTS (a test checks they agree)
    var SCRIPTS = ["gallery-base.js", "gallery-grid.js", "gallery-cards.js", "gallery-dialogs.js", "gallery-duplicates.js", "gallery.js"];

    function loraPromptAddAssets() {
        if (!document.querySelector("link[data-lp-gallery]")) {
            var link = document.createElement("link");
            link.rel = "stylesheet";
            link.href = BASE + "gallery.css";
            link.dataset.lpGallery = "1";
            document.head.appendChild(link);
        }
        if (!window.loraPromptGallery && !document.querySelector("script[data-lp-gallery]")) {
            // the parts share window.LoraPromptGalleryParts; async=false runs them in this order
            SCRIPTS.forEach(function (name) {
                var script = document.createElement("script");
                script.src = BASE + name;
                script.async = false;
                script.dataset.lpGallery = "1";
                document.head.appendChild(script);
            });
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(loraPromptAddAssets);
    } else {
        document.addEventListener("DOMContentLoaded", loraPromptAddAssets);
    }
})();
